"""Reporting: markdown reports, figures (the one plotting module), the HTML index of outputs.
Imports models (params, for the index) and the leaves; no torch.
"""
