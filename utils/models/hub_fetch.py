"""Fetch from the HF hub only what a streamed run reads: config, tokenizer files, the safetensors
index and its shards, into the ordinary HF cache (so later runs find them offline).

`snapshot_download` would take every file of a repository (often both pickle and safetensors
copies of the weights, and ONNX / GGUF variants); here each file is asked for by name with
`hf_hub_download`, so a 70B repository costs its safetensors and a few small JSON files.
Pickle files are never fetched. The endpoint is huggingface_hub's (`HF_ENDPOINT`), so a mirror
or a test server on 127.0.0.1 serve the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from utils.models.sources import ModelUnavailableError

OPTIONAL_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja")
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def hub_offline() -> bool:
    """huggingface_hub's offline switch (HF_HUB_OFFLINE=1), read when huggingface_hub was imported."""
    return bool(constants.HF_HUB_OFFLINE)


def _get(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """One file into the HF cache; None when the repository has no such file."""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except EntryNotFoundError:
        return None


def weight_files(repo_id: str, revision: str | None = None) -> list[str]:
    """The safetensors files of a repository: the shards its index names, else model.safetensors."""
    index = _get(repo_id, INDEX, revision)
    if index is not None:
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    return [SINGLE]


def fetch_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """Download config, tokenizer, index and safetensors shards of `repo_id` (nothing else) and
    return the cache snapshot folder holding them. Errors name the repository and the fix."""
    try:
        config = _get(repo_id, "config.json", revision)
        if config is None:
            raise ModelUnavailableError(f"hub model {repo_id} has no config.json; is it a transformers model?")
        for name in OPTIONAL_FILES:
            _get(repo_id, name, revision)
        for name in weight_files(repo_id, revision):
            if _get(repo_id, name, revision) is None:
                raise ModelUnavailableError(
                    f"hub model {repo_id} has no {name}: only safetensors are read (pickle files are never loaded). "
                    "Convert it with `AutoModel.from_pretrained(...).save_pretrained(dir, safe_serialization=True)` "
                    "and point a params file (kind: local) at that directory.")
    except RepositoryNotFoundError as e:
        raise ModelUnavailableError(f"hub model {repo_id} (revision {revision or 'main'}) was not found on "
                                    f"{constants.ENDPOINT}: check the id, or log in for a gated model") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise ModelUnavailableError(f"hub model {repo_id} could not be fetched from {constants.ENDPOINT} ({e}). "
                                    "Without network access, point a params file at a local copy.") from e
    return config.parent
