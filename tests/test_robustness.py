"""Nothing lost, nothing mixed, nothing silently wrong (issue 18): runs never write outside their
staging folder, params files never share an output folder by name, the swap survives signals and
concurrent runs, stale staging folders of dead runs go, corrupt caches are misses, corpora that are
not UTF-8 are refused or noted, and every bad input is one line before any kernel starts."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest
import torch
import yaml

import utils.analyses.checkpoint_dynamics as dynamics
import utils.engine.activations as act
import utils.engine.corpus as corpus_module
import utils.pipeline.run as run
from utils.cache_files import CacheWriteWarning, read_cache, write_cache
from utils.engine.corpus import CorpusDecodingWarning, CorpusError, corpus_notes, load_corpus
from utils.models.loading import load_model
from utils.models.params import ParamsError, load_params
from utils.models.sources import ModelUnavailableError
from utils.paths import PARAMS_DIR, REPO_ROOT, STAGE_ENV, TEST_PARAMS_DIR, StagingError, content_hash, output_dir
from utils.reporting.index import index_markdown, read_result, write_index
from utils.reporting.report import Report

from .conftest import TESTS_DIR

TINY = TESTS_DIR / "params" / "tiny-llama.yaml"
GPT2 = TESTS_DIR / "params" / "tiny-gpt2.yaml"
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# A notebook writing one table; with `marker`, it says it started and then waits to be interrupted.
NOTEBOOK = '''# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
model: str = "m"
output_root: str = "output"
tag: str = "first"
marker: str = ""
write: bool = True

# %%
import os
import time
from pathlib import Path

from utils import load_params, output_dir, write_text

out = output_dir(load_params(model), "99_probe", output_root)
if write:
    write_text(out / "table.csv", f"tag\\n{tag}\\n")
if marker:
    Path(marker).write_text(str(os.getpid()))  # the kernel's pid
    time.sleep(120)
'''


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "99_probe.py"
    path.write_text(NOTEBOOK)
    return path


def _utils_run(*args, **popen):
    return subprocess.run([PY, "-m", "utils.run", *map(str, args)], env=ENV, capture_output=True, text=True,
                          cwd=REPO_ROOT, **popen)


# --- 1. the model and the output root are the run's, not parameters ---------------------------------

@pytest.mark.parametrize("key", ["model", "output_root"])
def test_model_and_output_root_are_not_parameters(tmp_path, probe, key):
    with pytest.raises(ParamsError, match="not parameters"):
        run.execute_notebook(probe, TINY, tmp_path / "out", {key: str(GPT2)})
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.csv"))


def test_a_params_file_may_not_override_model_or_output_root(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()),
                                    "notebooks": {"01_weight_spectra": {"model": str(GPT2)}}}))
    with pytest.raises(ParamsError, match=r"notebooks.01_weight_spectra sets \['model'\]"):
        load_params(path)


def test_a_staged_kernel_cannot_write_its_notebook_elsewhere(tmp_path, monkeypatch):
    final, staging = tmp_path / "out" / "tiny-llama" / "99_probe", tmp_path / "stage"
    monkeypatch.setenv(STAGE_ENV, f"{final}{os.pathsep}{staging}")
    assert output_dir(load_params(TINY), "99_probe", tmp_path / "out") == staging
    with pytest.raises(StagingError, match="staged for"):
        output_dir(load_params(GPT2), "99_probe", tmp_path / "out")  # another model
    with pytest.raises(StagingError):
        output_dir(load_params(TINY), "99_probe", tmp_path / "elsewhere")  # another root
    other = output_dir(load_params(GPT2), "01_weight_spectra", tmp_path / "out")  # reading other notebooks' folders
    assert other == tmp_path / "out" / "tiny-gpt2" / "01_weight_spectra" and not other.exists()  # not created


def test_a_run_that_wrote_nothing_does_not_replace_the_outputs(tmp_path, probe):
    out = run.execute_notebook(probe, TINY, tmp_path / "out", {"tag": "kept"})
    with pytest.raises(RuntimeError, match="wrote no outputs"):
        run.execute_notebook(probe, TINY, tmp_path / "out", {"write": False})
    assert (out / "table.csv").read_text() == "tag\nkept\n"


# --- 2. output folders named by content outside params/ ----------------------------------------------

def test_a_params_file_outside_params_never_takes_a_shipped_name(tmp_path):
    impostor = tmp_path / "smollm2-135m.yaml"
    impostor.write_text(TINY.read_text())
    params = load_params(impostor)
    assert params.name == f"smollm2-135m-{content_hash(yaml.safe_load(TINY.read_text()))}"
    assert output_dir(str(impostor), "01_x", tmp_path).parent.name == params.name  # 06 passes the path itself
    assert load_params("smollm2-135m").name == "smollm2-135m"
    assert load_params(TINY).name == "tiny-llama"  # the repository's own files keep their stems
    other = tmp_path / "b" / "smollm2-135m.yaml"
    other.parent.mkdir()
    other.write_text(GPT2.read_text())
    assert load_params(other).name != params.name  # same stem, other content: other folders


def test_the_repositorys_params_stems_are_unique():
    shipped = {p.stem for p in PARAMS_DIR.glob("*.yaml")}
    assert shipped and not shipped & {p.stem for p in TEST_PARAMS_DIR.glob("*.yaml")}


# --- 3. the swap and stale staging folders -------------------------------------------------------------

def _folder(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "tag").write_text(tag)
    return path


def test_exchange_swaps_two_folders(tmp_path):
    a, b = _folder(tmp_path / "a", "A"), _folder(tmp_path / "b", "B")
    try:
        run.exchange(a, b)
    except NotImplementedError:
        pytest.skip("no rename-exchange on this system")
    assert (a / "tag").read_text() == "B" and (b / "tag").read_text() == "A"


@pytest.mark.parametrize("exchange", ["native", "two renames"])
def test_swap_in_replaces_the_previous_outputs(tmp_path, monkeypatch, exchange):
    if exchange == "two renames":
        monkeypatch.setattr(run, "exchange", lambda a, b: (_ for _ in ()).throw(NotImplementedError()))
    out = _folder(tmp_path / "nb", "old")
    staging = _folder(tmp_path / f".nb.staging-{run._process_tag(os.getpid())}-0123abcd", "new")
    run._swap_in(staging, out)
    assert (out / "tag").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["nb"]


SWAP_UNDER_SIGTERM = '''
import os, signal, sys
from pathlib import Path
import utils.pipeline.run as run
signal.signal(signal.SIGTERM, run._on_signal)
real = run.exchange
def exchange(a, b):  # SIGTERM arrives in the middle of the swap
    os.kill(os.getpid(), signal.SIGTERM)
    real(a, b)
run.exchange = exchange
root = Path(sys.argv[1])
out, staging = root / "nb", root / ".nb.staging-1.1-0123abcd"
try:
    try:
        run._swap_in(staging, out)
    except KeyboardInterrupt as err:
        raise run.RunInterrupted(err.signum, completed=True)
except run.RunInterrupted as err:
    print("interrupted", err.completed, (out / "tag").read_text(), sorted(p.name for p in root.iterdir()))
'''


def test_a_signal_during_the_swap_lands_after_it(tmp_path):
    _folder(tmp_path / "nb", "old")
    _folder(tmp_path / ".nb.staging-1.1-0123abcd", "new")
    done = subprocess.run([PY, "-c", SWAP_UNDER_SIGTERM, str(tmp_path)], env=ENV, capture_output=True, text=True)
    assert done.stdout.split() == ["interrupted", "True", "new", "['nb']"], done.stderr


CONCURRENT_SWAPS = '''
import os, sys
from pathlib import Path
import utils.pipeline.run as run
root, who = Path(sys.argv[1]), sys.argv[2]
for i in range(40):
    staging = run.unique_path(root, f".nb.staging-{run._process_tag(os.getpid())}-", directory=True)
    (staging / "tag").write_text(f"{who}{i}")
    run._swap_in(staging, root / "nb")
print("ok")
'''


def test_concurrent_swaps_both_succeed_and_never_leave_the_folder_missing(tmp_path):
    _folder(tmp_path / "nb", "start")
    procs = [subprocess.Popen([PY, "-c", CONCURRENT_SWAPS, str(tmp_path), w], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for w in "ab"]
    missing = 0
    while any(p.poll() is None for p in procs):
        missing += not (tmp_path / "nb" / "tag").exists()
    outs = [p.communicate() for p in procs]
    assert [o.strip() for o, _ in outs] == ["ok", "ok"], outs
    assert missing == 0 and [p.name for p in tmp_path.iterdir()] == ["nb"]
    assert (tmp_path / "nb" / "tag").read_text() in ("a39", "b39")


def _dead_tag() -> str:
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(0.2)"])
    tag = run._process_tag(child.pid)
    child.wait()
    return tag


def test_stale_staging_folders_of_dead_runs_are_removed(tmp_path):
    dead = _folder(tmp_path / f".nb.staging-{_dead_tag()}-0123abcd", "killed run")
    alive = _folder(tmp_path / f".nb.staging-{run._process_tag(os.getpid())}-0123abcd", "running")
    unrelated = _folder(tmp_path / ".hidden-thing", "user's")
    assert run.clean_stale(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and unrelated.exists()


def test_a_dead_runs_half_done_swap_is_undone(tmp_path):
    old = _folder(tmp_path / f".nb.old-{_dead_tag()}-0123abcd", "previous")  # killed between the two renames
    run.clean_stale(tmp_path)
    assert (tmp_path / "nb" / "tag").read_text() == "previous" and not old.exists()


def test_a_sigkilled_run_leaves_a_folder_the_next_run_removes(tmp_path, probe):
    marker = tmp_path / "started"
    child = subprocess.Popen([PY, "-m", "utils.run", str(probe), str(TINY), "--output-root", str(tmp_path / "out"),
                              "-p", f"marker={marker}"], env=ENV, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(marker, child)
    child.kill()
    child.wait()
    model_dir = tmp_path / "out" / "tiny-llama"
    assert any(p.name.startswith(".99_probe.staging-") for p in model_dir.iterdir())
    run.execute_notebook(probe, TINY, tmp_path / "out")
    assert [p.name for p in model_dir.iterdir() if p.is_dir()] == ["99_probe"]  # the stale staging folder is gone


def _wait_for(marker: Path, child: subprocess.Popen, limit: float = 120) -> None:
    start = time.monotonic()
    while not marker.exists():
        assert child.poll() is None and time.monotonic() - start < limit, "the notebook did not start"
        time.sleep(0.2)


# --- 10. interruptions are one line, and not failures --------------------------------------------------

def _signals_as_a_shell() -> None:
    """In the child before exec: SIGINT and SIGTERM at their defaults and not blocked, as an
    interactive shell starts make; a test worker's own dispositions are not inherited."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _signal_state(pid: int, signum: int) -> tuple[bool, bool]:
    """(ignored, blocked) of `signum` in process `pid`, from /proc/<pid>/status (SigIgn, SigBlk)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    bit = 1 << (signum - 1)
    return bool(int(fields["SigIgn"], 16) & bit), bool(int(fields["SigBlk"], 16) & bit)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_says_one_line_and_is_not_a_failure(tmp_path, probe, signum):
    first = run.execute_notebook(probe, TINY, tmp_path / "out", {"tag": "previous"})
    marker = tmp_path / "started"
    child = subprocess.Popen([PY, "-m", "utils.run", str(probe), str(TINY), "--output-root", str(tmp_path / "out"),
                              "-p", f"marker={marker}", "-p", "tag=second"], env=ENV, cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_signals_as_a_shell)
    _wait_for(marker, child)
    if Path("/proc/self/status").exists():  # (ignored, blocked): as a terminal's make would start it
        assert _signal_state(child.pid, signum) == (False, False)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 128 + signum
    kernel = int(marker.read_text())  # stopped with the run, whichever await the signal interrupted
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie its parent has not reaped yet
        assert psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    assert stderr.strip().count("\n") == 0 and "interrupted" in stderr and "previous outputs kept" in stderr, stderr
    assert (first / "table.csv").read_text() == "tag\nprevious\n"
    assert not (first / "99_probe.failed.ipynb").exists()
    assert [p.name for p in first.parent.iterdir() if p.is_dir()] == ["99_probe"]  # beside the index files
    (first / "report.md").write_text("# probe\n\n## Findings\n\n- one\n")
    result = read_result(first)  # papermill saves the executed notebook at every cell: it exists
    assert result.interrupted and (first / "99_probe.interrupted.ipynb").exists() and not result.failed
    index = index_markdown({"tiny-llama": [result]})
    assert "The last run was interrupted" in index and "failed" not in index


def test_the_index_survives_a_report_that_is_not_utf8(tmp_path):
    folder = tmp_path / "m" / "01_a"
    folder.mkdir(parents=True)
    (folder / "report.md").write_bytes(b"# Title \xe9t\xe9\n\n## Findings\n\n- caf\xe9\n")
    write_index(tmp_path)
    assert "caf\ufffd" in (tmp_path / "index.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("content, match", [(b"source: {kind: random\n", "YAML syntax error at line"),
                                            (b"description: caf\xe9\nsource: {}\n", "is not UTF-8")])
def test_a_broken_params_file_is_one_line(tmp_path, content, match):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match=match):
        load_params(path)
    done = _utils_run("01_weight_spectra", path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and match.split()[-1] in done.stderr, done.stderr


def test_an_output_root_that_is_a_file_is_one_line(tmp_path):
    root = tmp_path / "out"
    root.write_text("not a folder")
    done = _utils_run("01_weight_spectra", TINY, "--output-root", root)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "is a file" in done.stderr, done.stderr


def test_two_makes_of_one_notebook_do_not_race(tmp_path):
    """make -j2 twice at once: the .ipynb is written under a temporary name and renamed."""
    venv = Path(sys.prefix)
    if not (venv / ".installed").exists():
        pytest.skip("the venv has no make stamp")
    (tmp_path / "notebooks").mkdir()
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt", "requirements-models.txt", "pyproject.toml"):
        (tmp_path / name).write_bytes((REPO_ROOT / name).read_bytes())
        os.utime(tmp_path / name, (0, 0))  # older than the venv's stamp
    (tmp_path / "notebooks" / "01_weight_spectra.py").write_bytes((REPO_ROOT / "notebooks" / "01_weight_spectra.py").read_bytes())
    target = tmp_path / "notebooks" / "01_weight_spectra.ipynb"
    for _ in range(3):
        target.unlink(missing_ok=True)
        makes = [subprocess.Popen(["make", "-s", f"VENV={venv}", "notebooks/01_weight_spectra.ipynb"], cwd=tmp_path,
                                  env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(m.wait(), m.communicate()[1]) for m in makes]
        assert all(rc == 0 for rc, _ in results), results
        assert json.loads(target.read_text())["cells"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["01_weight_spectra.ipynb", "01_weight_spectra.py"]


# --- 8, 9. parameters and the model checked before any kernel starts ----------------------------------

@pytest.mark.parametrize("item, match", [("layer=abc", "layer of 02_attention_kernels must be int, got 'abc'"),
                                         ("head=1.5", "must be int, got 1.5"),
                                         ("complex_rtol=2", r"must be in \(0, 1\), got 2.0"),
                                         ("layer=-5", "must be at least -1, got -5")])
def test_utils_run_checks_parameters_before_a_kernel(item, match):
    done = _utils_run("02_attention_kernels", TINY, "-p", item)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.search(match, done.stderr), done.stderr


def test_params_file_overrides_are_checked_before_a_kernel(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(TINY.read_text()),
                                    "notebooks": {"04_representations": {"n_sequences": 1.5}}}))
    with pytest.raises(ParamsError, match="n_sequences of 04_representations must be int, got 1.5"):
        run.check_run("04_representations", path, tmp_path / "out")


def _params(tmp_path, **fields) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def test_availability_is_checked_before_a_kernel(tmp_path, monkeypatch):
    cuda = _params(tmp_path, source=yaml.safe_load(TINY.read_text())["source"], device="cuda")
    monkeypatch.setattr("utils.models.sources.gpu_visible", lambda: False)
    with pytest.raises(ModelUnavailableError, match="no GPU is visible"):
        run.check_run("01_weight_spectra", cuda, tmp_path / "out")
    run.check_run("06_training_dynamics", cuda, tmp_path / "out")  # 06 trains its own models on the CPU
    with pytest.raises(ModelUnavailableError, match="no GPU"):
        run.check_run("08_checkpoint_dynamics", cuda, tmp_path / "out")  # 08 loads checkpoints on the device
    missing = _params(tmp_path, source={"kind": "local", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        run.check_run("01_weight_spectra", missing, tmp_path / "out")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run.hub_offline.cache_clear()
    hub = _params(tmp_path, source={"kind": "hub", "id": "nobody/not-a-cached-model"})
    with pytest.raises(ModelUnavailableError, match="not in the local HF cache"):
        run.check_run("01_weight_spectra", hub, tmp_path / "out")
    run.hub_offline.cache_clear()


# --- 6. corpora ---------------------------------------------------------------------------------------

def test_a_corpus_that_is_mostly_undecodable_is_refused(tmp_path):
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CorpusError, match="are not UTF-8"):
        load_corpus(f"file:{tmp_path}/data.bin")


def test_replaced_bytes_are_warned_about_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_module, "_NOTES", {})  # the process's notes: no other test's reports get this one
    text = ("A sentence of plain text. " * 60).encode() + b"caf\xe9 " * 10
    (tmp_path / "latin1.txt").write_bytes(text)
    spec = f"file:{tmp_path}/latin1.txt"
    with pytest.warns(CorpusDecodingWarning, match=r"latin1.txt \(10 of"):
        corpus = load_corpus(spec)
    assert corpus.count("\ufffd") == 10
    assert any(spec in note for note in corpus_notes())
    assert f"Corpus `{spec}`: bytes that are not UTF-8" in Report("r").text()


# --- 7. caches ----------------------------------------------------------------------------------------

def test_an_unreadable_cache_entry_is_a_miss(tmp_path, capsys):
    entry = tmp_path / "entry.pt"
    torch.save({"a": torch.ones(3)}, entry)
    entry.write_bytes(entry.read_bytes()[:40])  # truncated
    assert read_cache(entry, lambda p: torch.load(p, weights_only=True), "activation cache entry") is None
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "unreadable" in message and "weights_only" not in message
    assert read_cache(tmp_path / "absent.pt", torch.load) is None and capsys.readouterr().err == ""


def test_a_failed_cache_write_is_a_warning(tmp_path):
    def disk_full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.warns(CacheWriteWarning, match="No space left"):
        assert write_cache(tmp_path / "entry.pt", disk_full) is False
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_a_corrupt_activation_cache_is_recomputed_and_overwritten(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    loaded = load_model(str(TINY))
    tokens = act.TokenSample(input_ids=torch.randint(3, 256, (4, 8), generator=torch.Generator().manual_seed(0)),
                             corpus="random", seed=0)
    first = act.collect_activations(loaded, tokens, keep_samples=4, ffn_layers=[0])
    (entry,) = (tmp_path / "cache" / "activations").iterdir()
    entry.write_bytes(b"PK\x03\x04 not a torch file")
    again = act.collect_activations(loaded, tokens, keep_samples=4, ffn_layers=[0])
    assert not again.from_cache and "unreadable" in capsys.readouterr().err
    torch.testing.assert_close(again.residual[2].covariance(), first.residual[2].covariance())
    assert act.collect_activations(loaded, tokens, keep_samples=4, ffn_layers=[0]).from_cache  # overwritten
    monkeypatch.setattr(act.torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    entry.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        act.collect_activations(loaded, tokens, keep_samples=4, ffn_layers=[0])  # the run goes on
    assert any(issubclass(w.category, CacheWriteWarning) for w in caught)


@pytest.mark.parametrize("content", [b"", b'{"key": ', b"\xff\xfe", b'{"key": null}', b"[1, 2]"])
def test_a_corrupt_checkpoint_series_entry_is_a_miss(tmp_path, monkeypatch, content):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path / "cache"))
    key = {"checkpoint": "c", "step": 3}
    path = dynamics.cache_path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert dynamics._load_cached(key) is None
    rows = dynamics.pd.DataFrame({"layer": [0], "metric": ["m"], "value": [1.5]})
    dynamics._save_cached(key, rows)
    assert dynamics._load_cached(key).equals(rows)


def test_no_message_suggests_unpickling():
    for module in (run, act, dynamics):
        assert "weights_only=False" not in Path(module.__file__).read_text()
    assert "weights_only=False" not in Path(read_cache.__code__.co_filename).read_text()


def test_stdlib_corpus_is_extracted_once_and_an_unreadable_entry_is_re_extracted(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path))
    stdlib = Path(corpus_module.sysconfig.get_paths()["stdlib"])
    reference = corpus_module._extract_stdlib_docstrings(stdlib, 20_000)
    assert corpus_module._stdlib_docstrings(20_000) == reference  # extracted, then written
    (entry,) = (tmp_path / "corpus").iterdir()
    monkeypatch.setattr(corpus_module, "_extract_stdlib_docstrings", lambda *a: pytest.fail("extracted again"))
    assert corpus_module._stdlib_docstrings(20_000) == reference  # read back, not extracted
    entry.write_bytes(b"\xff\xfe broken")
    monkeypatch.undo()
    monkeypatch.setenv("TRANSFORMER_SPECTRA_CACHE", str(tmp_path))
    assert corpus_module._stdlib_docstrings(20_000) == reference  # unreadable: a miss, re-extracted
    assert entry.read_bytes().decode("utf-8") == reference


def test_a_run_whose_kernel_the_signal_handler_stopped_counts_as_interrupted(monkeypatch):
    """`_on_signal` kills the kernel before raising: should its exception be lost inside nbclient's
    loop, what nbclient raises next (a dead kernel) is still an interruption by that signal."""
    monkeypatch.setattr(run, "_RECEIVED", [])
    assert run._interruption(RuntimeError("kernel died")) is None
    with pytest.raises(run.RunInterrupted):
        run._on_signal(signal.SIGTERM, None)
    assert run._interruption(RuntimeError("kernel died")) == signal.SIGTERM
