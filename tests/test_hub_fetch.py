"""utils.models.hub_fetch: a hub model not in the cache is fetched file by file (config, tokenizer,
safetensors index and shards; never pickles or other files) from a server in the hub's URL
layout on 127.0.0.1, then streamed with the loaded model's numbers."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

from utils.metrics.weight_spectra import weight_spectra

from .conftest import TESTS_DIR

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """GET/HEAD /<org>/<name>/resolve/<revision>/<file>, with the headers huggingface_hub reads."""

    root: Path
    served: list

    def _file(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return None, "RepoNotFound"
        repo = self.root / parts[0] / parts[1]
        if not repo.is_dir():
            return None, "RepoNotFound"
        path = repo / "/".join(parts[4:])
        return (path, None) if path.is_file() else (None, "EntryNotFound")

    def _answer(self, body: bool):
        path, error = self._file()
        if path is None:
            self.send_response(404)
            self.send_header("X-Error-Code", error)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.served.append(path.name)
            self.wfile.write(data)

    def do_HEAD(self):  # noqa: N802 (http.server's names)
        self._answer(body=False)

    def do_GET(self):  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_server(tmp_path):
    from utils import load_model

    loaded = load_model(str(TESTS_DIR / "params" / "tiny-llama.yaml"))
    repo = tmp_path / "served" / "test-org" / "tiny-llama"
    loaded.model.save_pretrained(repo, safe_serialization=True, max_shard_size="100KB")
    (repo / "pytorch_model.bin").write_bytes(b"a pickle that must never be fetched")
    (repo / "README.md").write_text("not needed\n")
    handler = type("Handler", (_HubHandler,), {"root": tmp_path / "served", "served": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.served, loaded
    server.shutdown()


def _run(code: str, endpoint: str, cache: Path) -> str:
    env = {"HF_ENDPOINT": endpoint, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1", "PATH": "/usr/bin:/bin",
           "TRANSFORMER_SPECTRA_CACHE": str(cache.parent / "spectra-cache")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_uncached_hub_model_is_fetched_file_by_file_then_streamed(hub_server, tmp_path):
    endpoint, served, loaded = hub_server
    params = tmp_path / "hub.yaml"
    params.write_text("source: {kind: hub, id: test-org/tiny-llama}\ntask: causal_lm\n")
    out = _run(f"""
        import json
        from utils import load_weights
        from utils.metrics.weight_spectra import weight_spectra
        w = load_weights({str(params)!r})
        print(json.dumps({{"kind": type(w).__name__, "origin": w.origin, "files": len(w.adapter.store.files),
                          "table": weight_spectra(w.adapter, progress=False)[0].to_json(double_precision=15)}}))
    """, endpoint, tmp_path / "hub-cache")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["kind"] == "StreamedWeights" and "fetched" in result["origin"] and result["files"] > 1
    assert "pytorch_model.bin" not in served and "README.md" not in served
    index = json.loads((tmp_path / "served/test-org/tiny-llama/model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and shards <= set(served) and "config.json" in served
    expected = weight_spectra(loaded.adapter, progress=False)[0]
    got = pd.read_json(io.StringIO(result["table"]))
    pd.testing.assert_frame_equal(expected.reset_index(drop=True), got.reset_index(drop=True), check_dtype=False, rtol=1e-12)


def test_unknown_hub_model_names_the_repository(hub_server, tmp_path):
    endpoint, _, _ = hub_server
    out = _run("""
        from utils.models.hub_fetch import fetch_checkpoint
        from utils.models.sources import ModelUnavailableError
        try:
            fetch_checkpoint("test-org/no-such-model")
        except ModelUnavailableError as e:
            print("refused:", e)
    """, endpoint, tmp_path / "hub-cache")
    assert "refused:" in out and "test-org/no-such-model" in out
