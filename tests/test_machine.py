"""utils.machine: LAPACK threads by size and by what else runs, idle cores from /proc."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from utils import machine


def test_lapack_threads_by_size_and_load(monkeypatch):
    """One thread below the crossover; above it every core when all are idle, else as many
    threads as idle cores (at least one); the previous setting is restored."""

    monkeypatch.setattr(machine, "_cores", lambda: 4)
    before = torch.get_num_threads()
    monkeypatch.setattr(machine, "_idle_cores", lambda: 4.0)
    with machine.lapack_threads(16, crossover=1024):
        assert torch.get_num_threads() == 1
    with machine.lapack_threads(4096, crossover=1024):
        assert torch.get_num_threads() == max(before, 4)
    for idle, threads in [(3.0, 3), (2.5, 2), (1.0, 1), (0.2, 1), (-3.0, 1)]:
        monkeypatch.setattr(machine, "_idle_cores", lambda idle=idle: idle)
        with machine.lapack_threads(4096, crossover=1024):
            assert torch.get_num_threads() == threads, idle
    assert torch.get_num_threads() == before


def test_running_elsewhere_excludes_own_threads(tmp_path):
    """Other processes' runnable threads = /proc/loadavg's running count minus this process's
    threads in state R (a command name may hold ') R ')."""

    (tmp_path / "loadavg").write_text("1.50 1.20 1.00 5/321 4242\n")
    states = {"101": "101 (python) R 1 101", "102": "102 (a) R (b) S 1 101", "103": "103 (worker) R 1 101",
              "104": "104 (idle) S 1 101"}
    for tid, stat in states.items():
        (tmp_path / "self" / "task" / tid).mkdir(parents=True)
        (tmp_path / "self" / "task" / tid / "stat").write_text(stat + " 0 0\n")
    assert machine._running_elsewhere(snapshots=1, proc=tmp_path) == 5 - 2  # 101 and 103 are ours
    assert machine._running_elsewhere(proc=tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="needs Linux /proc")
def test_running_elsewhere_sees_a_busy_process():
    """A spinning child process is a runnable thread of another process."""
    import subprocess
    import sys
    import time


    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert max(machine._running_elsewhere(snapshots=5) for _ in range(3)) >= 1
    finally:
        child.kill()
        child.wait()


def test_idle_cores_is_a_whole_number_of_this_process_cores(monkeypatch):
    monkeypatch.setattr(machine, "_cores", lambda: 4)
    for idle, expected in ((3.6, 3), (7.0, 4), (-1.5, 0), (0.4, 0)):
        monkeypatch.setattr(machine, "_idle_cores", lambda idle=idle: idle)
        assert machine.idle_cores() == expected
