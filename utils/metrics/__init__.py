"""Metrics: spectra and the power-law fit, attention kernels, subspaces, streaming covariance,
CKA, the weight spectra of a checkpoint. Imports models (for the weight vocabulary) and the leaves.
"""
