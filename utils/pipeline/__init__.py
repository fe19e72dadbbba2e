"""Pipeline: running a notebook (`utils.run`), reading and applying its parameters cell, the
targets `make all` runs. No torch: it imports models' params and sources, reporting, the leaves.
"""
