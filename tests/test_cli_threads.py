"""Threads that pick themselves: unset, a script uses the cores other processes leave idle when it
starts (core/util/cli.py: choose_threads), so that the main job is fast on a busy machine without a
flag."""
import os
import subprocess
import sys

import pytest

import core.util.cli as cli


def _stat(busy, idle):
    """A /proc/stat with two CPUs of these busy and idle jiffies."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    lines += [f"cpu{k} {busy[k]} 0 0 {idle[k]} 0 0 0 0 0 0" for k in range(2)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("busy_share, expected", [((0.0, 0.0), 2), ((1.0, 0.0), 1), ((1.0, 1.0), 1),
                                                  ((0.6, 0.3), 1), ((0.2, 0.1), 2)])
def test_the_idle_cores_of_proc_stat_choose_the_threads(monkeypatch, busy_share, expected):
    """Breaks caught: all cores used whatever the load (what made the main job 4x slower on a busy
    machine), no thread when every core is busy, the busy share read as the idle one."""
    samples = iter([_stat([0, 0], [0, 0]),
                    _stat([int(100 * b) for b in busy_share], [int(100 * (1 - b)) for b in busy_share])])
    monkeypatch.setattr(cli, "_proc_stat", lambda: next(samples))
    monkeypatch.setattr(cli.time, "sleep", lambda s: None)
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    said = []
    assert cli.choose_threads(None, said.append) == expected
    assert said[0].startswith(f"threads: {expected} (") and "--threads N chooses" in said[0]
    assert cli.choose_threads(3, said.append) == 3 and len(said) == 1  # --threads chooses, silently


def test_torchrun_and_omp_num_threads_choose_for_the_script(monkeypatch):
    """OMP_NUM_THREADS, which torchrun sets to 1 per process, is the choice when set; the idle
    cores are shared among the processes of a machine otherwise."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cli.choose_threads(None, lambda line: pytest.fail(line)) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(cli, "idle_cores", lambda seconds=0.1: 2.0)
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1})
    said = []
    assert cli.choose_threads(None, said.append) == 1 and "per process of 2" in said[0]


def test_the_real_proc_stat_is_read():
    """The measure itself, on this machine: between 0 and its cores."""
    idle = cli.idle_cores(0.05)
    if not os.path.exists("/proc/stat"):
        assert idle is None
        return
    assert 0 <= idle <= len(os.sched_getaffinity(0)) + 1e-9


@pytest.mark.slow
def test_the_main_job_says_the_threads_it_chose_on_a_busy_machine(fake_coco, tmp_path):
    """training.py with one busy process beside it on this machine: it says what it chose, at most
    the idle cores (at least 1)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        result = subprocess.run([sys.executable, "training.py", "--model", "rnn", "--data_dir", str(fake_coco),
                                 "--epochs", "1", "--max_iters", "1", "--hidden_dim", "8", "--wordvec_dim", "8",
                                 "--checkpoint", str(tmp_path / "r.npz"), "--out_dir", str(tmp_path), "--quiet"],
                                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        busy.kill()
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("threads: "))
    chosen = int(line.split()[1])
    assert 1 <= chosen <= max(1, len(os.sched_getaffinity(0)) - 1), line
