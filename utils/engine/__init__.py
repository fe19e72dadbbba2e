"""The engine that runs models: activation collection and its per-batch consumers, the corpus and
token samples, training with spectral callbacks. Imports metrics, models and the leaves.
"""
