"""Load a model from a params file: hub id, local directory, GGUF file, pip-bundled model, or a
random-initialised config; dequantized GGUF models are cached as safetensors.

Safe by default: `trust_remote_code` only when the params file asks; safetensors only
(`use_safetensors=True`); configs are data, never executed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from utils.machine import available_ram
from utils.models.adapters import CheckpointAdapter, ModelAdapter, family_of, get_adapter
from utils.models.gguf import auto_class, dequantized_dir
from utils.models.hub_fetch import fetch_checkpoint, hub_offline
from utils.models.nanogpt_config import byte_tokenizer  # registers spectra_nanogpt with AutoConfig
from utils.models.params import Params, load_params
from utils.models.sources import ModelUnavailableError, check_available, gguf_path, local_dir, package_dir
from utils.models.synthetic import cached_checkpoint
from utils.models.tensor_store import QuantizedCheckpointError, TensorStore, check_checkpoint_dir, check_finite

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelTooLargeError(RuntimeError):
    pass


class TokenizerMismatchError(RuntimeError):
    """The tokenizer emits ids the model's embedding has no row for."""


def check_tokenizer(tokenizer, config, params: Params, where: str) -> None:
    """Raise TokenizerMismatchError when the tokenizer's largest id is not below the embedding's
    row count (config vocab_size): a tokenizer copied from another model would make every
    forward pass fail inside the embedding with an IndexError."""
    rows = getattr(getattr(config, "text_config", None) or config, "vocab_size", None)
    top = max(tokenizer.get_vocab().values(), default=-1)
    if rows is not None and top >= rows:
        raise TokenizerMismatchError(
            f"{params.name}: the tokenizer in {where} has token ids up to {top} ({len(tokenizer)} tokens), but the "
            f"model's embedding has only {rows} rows (config vocab_size), so it does not belong to these weights. "
            "Put the tokenizer files that came with the checkpoint beside its weights."
        )


def _model_table(params: Params, origin: str, adapter, model_type: str, n_parameters: int) -> dict:
    """Facts for a report's configuration table (loaded or streamed weights alike)."""
    d = adapter.dims
    return {
        "params": params.name,
        "source": origin,
        "architecture": f"{adapter.family.name} ({model_type})",
        "quantization of source": params.quantization,
        "dtype": params.dtype,
        "layers (L)": d.L,
        "hidden size (d)": d.d,
        "FFN width (d_ff)": d.d_ff,
        "query heads (h)": d.h,
        "KV heads (GQA)": d.h_kv,
        "head dim (d_head)": d.d_head,
        "vocabulary (V)": d.V,
        "parameters": n_parameters,
    }


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: ModelAdapter
    params: Params
    load_seconds: float
    origin: str  # where the weights came from, for reports

    @property
    def dims(self):
        return self.adapter.dims

    def describe(self) -> dict:
        """Facts for a report's configuration table."""
        return _model_table(self.params, self.origin, self.adapter, self.model.config.model_type,
                            sum(p.numel() for p in self.model.parameters()))


# --- loading ----------------------------------------------------------------------------------

def _random_model(params: Params):
    s = params.source
    config = AutoConfig.for_model(s["model_type"], **s["config"])
    torch.manual_seed(int(s.get("seed", 0)))
    model = auto_class(params.task).from_config(config, attn_implementation="eager")
    if s.get("tokenizer", "bytes") != "bytes":
        raise ModelUnavailableError(f"{params.path}: random models support tokenizer 'bytes' only")
    tokenizer = byte_tokenizer()
    check_tokenizer(tokenizer, config, params, "the byte tokenizer")
    return model, tokenizer


def _estimate_bytes(config, dtype: torch.dtype) -> int:
    """Rough parameter memory from a config: embeddings + L * (attention + FFN)."""
    c = getattr(config, "text_config", None) or config
    d = c.hidden_size
    L = c.num_hidden_layers
    d_ff = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d
    V = c.vocab_size
    n = 2 * V * d + L * (4 * d * d + 3 * d * d_ff)
    return n * torch.tensor([], dtype=dtype).element_size()


def _available_bytes(device: str) -> int:
    if device in ("cuda", "auto") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free + (available_ram() if device == "auto" else 0)
    return available_ram()


def _check_fits(config, params: Params) -> None:
    need = _estimate_bytes(config, _DTYPES[params.dtype])
    have = _available_bytes(params.device)
    if need > 0.9 * have:
        raise ModelTooLargeError(
            f"{params.name}: the weights need about {need / 2**30:.1f} GiB in {params.dtype}, but only "
            f"{have / 2**30:.1f} GiB is free on {params.device}. Set `dtype: bfloat16`, `device: cuda` or "
            f"`device: auto` in {params.path}, or choose a smaller model."
        )


def _place(model: torch.nn.Module, params: Params) -> torch.nn.Module:
    if params.device == "cuda":
        if not torch.cuda.is_available():
            raise ModelUnavailableError(f"{params.path} asks for device 'cuda' but no GPU is visible")
        model = model.to("cuda")
    return model.eval()


def load_model(params_or_name: Params | str) -> LoadedModel:
    """Load the model a params file describes, with its tokenizer and architecture adapter."""
    params = params_or_name if isinstance(params_or_name, Params) else load_params(params_or_name)
    check_available(params, offline=False)
    start = time.perf_counter()
    dtype = _DTYPES[params.dtype]
    s = params.source
    common = dict(dtype=dtype, trust_remote_code=params.trust_remote_code)
    if params.device in ("auto", "cuda"):  # cuda: weights go straight to the GPU, not via host RAM
        common["device_map"] = params.device
    if s["kind"] == "random":
        model, tokenizer = _random_model(params)
        model = model.to(dtype)
        origin = f"random init of {s['model_type']} (seed {s.get('seed', 0)})"
    else:
        directory, origin = _checkpoint_location(params)
        if s["kind"] == "hub" and s.get("revision"):
            common["revision"] = s["revision"]
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=params.trust_remote_code)
        _check_fits(config, params)  # before anything reads weights
        local = local_dir(params, directory)
        if local is not None:
            check_checkpoint_dir(local)  # pickle-only, truncated, corrupt, codes without scales: a clear error first
            _check_loadable_quantization(TensorStore(local), config)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=params.trust_remote_code)
        check_tokenizer(tokenizer, config, params, str(directory))
        model = auto_class(params.task).from_pretrained(str(directory), use_safetensors=True, **common)
    if params.device != "auto":
        model = _place(model, params)
    model.eval()
    adapter = get_adapter(model)
    check_finite(adapter)
    return LoadedModel(model, tokenizer, adapter, params, time.perf_counter() - start, origin)


def _check_loadable_quantization(store: TensorStore, config) -> None:
    """A checkpoint with quantized weights and scales loads through transformers only when its
    config names the quantization; otherwise from_pretrained would read the codes as weights."""
    if store.quantized and not getattr(config, "quantization_config", None):
        raise QuantizedCheckpointError(
            f"{store.directory}: {store.quantization}, but config.json has no quantization_config, so loading the "
            "model would use the codes as weights. The weight notebooks (01-03, 07) stream and dequantize it; for "
            "the others save it dequantized once, or add the quantization_config it was made with."
        )


def _checkpoint_location(params: Params) -> tuple[Path | str, str]:
    """(directory or hub id, origin for reports) of a params file with files on disk."""
    s = params.source
    gguf = gguf_path(params)
    if gguf is not None:
        return dequantized_dir(gguf, params), f"GGUF {gguf.name} (dequantized, cached)"
    if s["kind"] == "bundled":
        return package_dir(s["package"]) / s["subdir"], f"pip package {s['package']}"
    if s["kind"] == "local":
        return Path(s["path"]), f"local directory {s['path']}"
    if s["kind"] == "synthetic":
        directory = cached_checkpoint(s["shape"], int(s.get("seed", 0)))
        return directory, f"random bf16 checkpoint at the {s['shape']} shape (seed {s.get('seed', 0)}, {directory.name})"
    return s["id"], f"HF hub {s['id']}"


# --- weights without the model ------------------------------------------------------------------

@dataclass
class StreamedWeights:
    """A checkpoint's weights read tensor by tensor (no model, no tokenizer): the weight
    vocabulary of `LoadedModel` for notebooks that need only tensors."""

    adapter: CheckpointAdapter
    params: Params
    load_seconds: float
    origin: str

    @property
    def dims(self):
        return self.adapter.dims

    def describe(self) -> dict:
        """Facts for a report's configuration table (as `LoadedModel.describe`)."""
        store = self.adapter.store
        table = _model_table(self.params, self.origin, self.adapter, self.adapter.top_config.model_type,
                             sum(torch.Size(store.shape(n)).numel() for n in store.names))
        if store.quantization:  # what the tensors are, whatever the params file says
            table["quantization of source"] = store.quantization
        return {**table, "weights read": "streamed from safetensors, one tensor at a time"}


def open_checkpoint(params_or_name: Params | str) -> StreamedWeights | None:
    """The checkpoint's weights as a `CheckpointAdapter` over its safetensors, or None when the
    params source has no files on disk (random configs; hub models not in the local cache while
    huggingface_hub is offline). A hub model not in the cache is fetched first when the hub can
    be reached: config, tokenizer and safetensors only (`utils.models.hub_fetch`), never the
    whole repository. Checks the files (pickle-only, truncated, corrupt) but reads no tensor."""
    params = params_or_name if isinstance(params_or_name, Params) else load_params(params_or_name)
    if params.source["kind"] == "random":
        return None
    check_available(params, offline=False)
    start = time.perf_counter()
    directory, origin = _checkpoint_location(params)
    local = local_dir(params, directory)
    if local is None and params.source["kind"] == "hub" and not hub_offline():
        local = fetch_checkpoint(params.source["id"], params.source.get("revision"))
        origin += " (fetched: config, tokenizer, safetensors)"
    if local is None:
        return None
    config = AutoConfig.from_pretrained(str(local), trust_remote_code=params.trust_remote_code)
    device = "cuda" if params.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    adapter = CheckpointAdapter(TensorStore(local), config, family_of(config),
                                causal_lm=params.task == "causal_lm", dtype=_DTYPES[params.dtype], device=device)
    return StreamedWeights(adapter, params, time.perf_counter() - start, origin)


@dataclass
class StreamedModel(StreamedWeights):
    """A checkpoint to run block by block (`utils.engine.layerwise`): the weights as
    `StreamedWeights` (nothing read yet) and the tokenizer that came with them."""

    tokenizer: object = None

    def describe(self) -> dict:
        return {**super().describe(), "weights read": "streamed block by block (layer-major), each tensor once"}


def open_model(params_or_name: Params | str) -> StreamedModel | LoadedModel:
    """The model for the notebooks that run it (04, 05, 08): its checkpoint opened for the
    layer-major engine with its tokenizer (`StreamedModel`; no tensor read, memory of one block
    later) when the params source has safetensors on disk or fetchable, else the loaded model
    (random configs). The tokenizer is checked against the embedding first (`check_tokenizer`)."""
    params = params_or_name if isinstance(params_or_name, Params) else load_params(params_or_name)
    streamed = open_checkpoint(params)
    if streamed is None:
        return load_model(params)
    directory = streamed.adapter.store.directory
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=params.trust_remote_code)
    check_tokenizer(tokenizer, streamed.adapter.top_config, params, str(directory))
    return StreamedModel(streamed.adapter, streamed.params, streamed.load_seconds, streamed.origin, tokenizer)


def load_weights(params_or_name: Params | str, check: bool = True) -> StreamedWeights | LoadedModel:
    """Weights for notebooks that need only tensors (01, 02, 03, 07's weight part): streamed from
    the checkpoint's safetensors when the params source has them on disk (peak memory: one
    tensor and its Gram, not the model; no tokenizer needed), else the loaded model. Both expose
    `.adapter` (the weight vocabulary), `.params`, `.dims`, `.origin`, `.load_seconds` and
    `.describe()`. With `check`, every matrix is scanned for NaN/Inf first (one cheap pass)."""
    streamed = open_checkpoint(params_or_name)
    if streamed is None:
        return load_model(params_or_name)  # scans for NaN/Inf itself
    if check:
        check_finite(streamed.adapter)
    return streamed
