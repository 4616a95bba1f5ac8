"""Choosing the CPU thread count: idle cores measured from /proc/stat, OMP_NUM_THREADS, explicit requests."""
import pytest
import torch

from fusionmamba_triton import threads
from fusionmamba_triton.cli import main


def fake_stat(monkeypatch, samples):
    """Make _cpu_times return the given (busy, total) samples in turn."""
    it = iter(samples)
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(it))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)


@pytest.mark.parametrize("busy_fraction,cpus,expected", [(0.0, 2, 2), (0.5, 2, 1), (1.0, 2, 1), (0.25, 8, 6)],
                         ids=["idle", "one-busy-of-two", "all-busy", "two-busy-of-eight"])
def test_auto_threads_counts_idle_cores(monkeypatch, busy_fraction, cpus, expected):
    fake_stat(monkeypatch, [(0.0, 0.0), (1000.0 * busy_fraction, 1000.0)])
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(threads, "usable_cpus", lambda: cpus)
    assert threads.auto_threads() == expected


def test_auto_threads_without_proc_stat_uses_every_cpu(monkeypatch):
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 3)
    assert threads.auto_threads() == 3


def test_real_measurement_is_in_range():
    idle = threads.idle_cpus(0.02)
    assert idle is None or -0.01 <= idle <= (threads.os.cpu_count() or 1) + 0.01
    assert 1 <= threads.auto_threads(0.02) <= threads.usable_cpus()


def test_configure_threads_order_of_precedence(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "auto_threads", lambda: 1)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert threads.configure_threads(3) == 3 and torch.get_num_threads() == 3
        assert threads.configure_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="at least 1"):
            threads.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_cli_rejects_zero_threads(tmp_path, capsys):
    code = main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                 "--threads", "0", "--method", "model"])
    assert code == 1 and "--threads must be at least 1" in capsys.readouterr().err
