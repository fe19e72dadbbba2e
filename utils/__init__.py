"""transformer-spectra: spectra and geometry of transformer language models.

The public API, re-exported from the modules that define it.
"""

from .activations import ActivationStats, BatchActivations, collect_activations
from .adapters import (
    AttentionWeights,
    CheckpointAdapter,
    FFNWeights,
    ModelAdapter,
    ModelDims,
    UnsupportedArchitectureError,
    WeightAdapter,
    get_adapter,
    get_model_dims,
)
from .comparison import weight_comparison
from .corpus import load_corpus, sample_tokens
from .covariance import StreamingCovariance
from .kernels import HeadKernels, head_kernels, kernel_table, layer_metrics
from .models import LoadedModel, ModelTooLargeError, ModelUnavailableError, StreamedWeights, load_model, load_weights
from .params import Params, ParamsError, load_params
from .report import Report, output_dir, save_npy, write_csv, write_text
from .representations import Drift, LogitLens, activation_spectra, cka_blocks, cka_matrix, linear_cka
from .spectra import (
    components_for_variance,
    cumulative_share,
    early_eigenvalue_enrichment,
    effective_rank,
    fit_power_law,
    js_divergence,
    marchenko_pastur_edge,
    mp_signal_ratio,
    nerve_metrics,
    participation_ratio,
    power_law_slope,
    rank_slope,
    spectral_entropy,
    stable_rank,
    weight_metrics,
)
from .subspaces import (
    chance_similarity,
    energy_in_subspace,
    ffn_alignment,
    get_attn_subspace,
    layer_subspaces,
    similarity_matrix,
    subspace_similarity,
)
from .tensor_store import CheckpointError, CorruptCheckpointError, NonFiniteWeightError, TensorStore, UnsafeCheckpointError
from .training import SpectralCallback, SpectralTrainerCallback, TokenData, TrainConfig, byte_tokenizer, train
from .weights import weight_spectra
