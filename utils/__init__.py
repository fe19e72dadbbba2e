"""transformer-spectra: spectra and geometry of transformer language models, layer by layer.

The package is built in floors; a module imports only from its own floor or those below it
(tests/test_architecture.py checks this, and that no utils import hides inside a function):

    paths, atomic_io, machine   leaves: where files live, atomic writes, cores / memory / LAPACK threads
    models/     params files, sources, loading, the tensor store, family adapters, synthetic checkpoints, nanoGPT
    metrics/    spectra and the power-law fit, attention kernels, subspaces, covariance, CKA, weight spectra
    engine/     the activation engine and its consumers, the corpus, training with spectral callbacks
    reporting/  markdown reports, figures, the HTML index
    analyses/   what each notebook's findings and verdicts compute (one module per notebook)
    pipeline/   running a notebook (utils.run), its parameters cell, make targets

`run`, `index` and `targets` beside this file are the command-line entry points
(`python -m utils.run ...`). The names below are the notebook-facing API; each is imported from
its module on first use, so `import utils` loads no torch (see docs/CONVENTIONS.md for the map).
"""

from __future__ import annotations

import importlib

_API: dict[str, tuple[str, ...]] = {
    "utils.analyses.model_comparison": ("weight_comparison",),
    "utils.atomic_io": ("save_npy", "write_csv", "write_text",),
    "utils.engine.activations": ("ActivationStats", "BatchActivations", "collect_activations",),
    "utils.engine.corpus": ("load_corpus", "sample_tokens",),
    "utils.engine.representations": ("activation_spectra", "Drift", "LogitLens",),
    "utils.engine.training": (
        "byte_tokenizer", "SpectralCallback", "SpectralTrainerCallback", "TokenData", "train",
        "TrainConfig",
    ),
    "utils.metrics.cka": ("cka_blocks", "cka_matrix", "linear_cka",),
    "utils.metrics.covariance": ("StreamingCovariance",),
    "utils.metrics.kernels": ("head_kernels", "HeadKernels", "kernel_table", "layer_metrics",),
    "utils.metrics.spectra": (
        "components_for_variance", "cumulative_share", "early_eigenvalue_enrichment", "effective_rank",
        "fit_power_law", "js_divergence", "marchenko_pastur_edge", "mp_signal_ratio", "nerve_metrics",
        "participation_ratio", "power_law_slope", "rank_slope", "spectral_entropy", "stable_rank",
        "weight_metrics",
    ),
    "utils.metrics.subspaces": (
        "chance_similarity", "energy_in_subspace", "ffn_alignment", "get_attn_subspace",
        "layer_subspaces", "similarity_matrix", "subspace_similarity",
    ),
    "utils.metrics.weight_spectra": ("weight_spectra",),
    "utils.models.adapters": (
        "AttentionWeights", "CheckpointAdapter", "FFNWeights", "get_adapter", "get_model_dims",
        "ModelAdapter", "ModelDims", "UnsupportedArchitectureError", "WeightAdapter",
    ),
    "utils.models.loading": (
        "load_model", "load_weights", "LoadedModel", "ModelTooLargeError", "open_model", "StreamedModel",
        "StreamedWeights",
    ),
    "utils.models.params": ("load_params", "Params", "ParamsError",),
    "utils.models.sources": ("ModelUnavailableError",),
    "utils.models.tensor_store": (
        "CheckpointError", "CorruptCheckpointError", "NonFiniteWeightError", "TensorStore",
        "UnsafeCheckpointError",
    ),
    "utils.paths": ("output_dir",),
    "utils.reporting.report": ("Report",),
}
_MODULE_OF = {name: module for module, names in _API.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'utils' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
