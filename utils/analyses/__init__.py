"""Analyses: what a notebook's findings and verdicts compute, one module per notebook, returning
dataclasses and tables. The top floor with pipeline: may import every floor below.
"""
