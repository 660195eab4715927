"""The engines' tuning is one DiffSettings value: built from HARNESS_DIFF_* at the edge (the CLI), passed down."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import harness.diff.engine as engine
from diff_helpers import random_state, write_checkpoint
from harness.__main__ import main
from harness.config import from_env
from harness.diff import DiffSettings, compare
from harness.errors import HarnessError

LAYOUT = {"model.layers.0.mlp.up_proj.weight": (64, 8), "model.layers.1.mlp.up_proj.weight": (64, 8)}


@pytest.fixture
def pair(tmp_path):
    return (write_checkpoint(tmp_path / "a", random_state(LAYOUT, 1), "single"),
            write_checkpoint(tmp_path / "b", random_state(LAYOUT, 2), "single"))


@pytest.fixture
def pool_sizes(monkeypatch) -> list[int]:
    """The worker counts of the CPU engine's thread pools (a real pool, its size recorded)."""
    sizes: list[int] = []

    class Recorded(ThreadPoolExecutor):
        def __init__(self, max_workers=None, *a, **k):
            sizes.append(max_workers)
            super().__init__(max_workers, *a, **k)

    monkeypatch.setattr(engine, "ThreadPoolExecutor", Recorded)
    return sizes


def test_defaults_are_the_engines_documented_ones():
    s = DiffSettings.from_config(from_env({}))
    assert s == DiffSettings()
    assert (s.kernel, s.block, s.warps, s.k_group, s.programs_per_sm, s.slot_bytes, s.slots) == \
        ("triton", 4096, 16, 32, 4, 256 << 20, 3)
    assert 1 <= s.reader_threads <= 32 and s.threads == 0


def test_every_variable_reaches_its_setting():
    env = {"HARNESS_DIFF_THREADS": "3", "HARNESS_DIFF_KERNEL": "eager", "HARNESS_DIFF_BLOCK": "2048",
           "HARNESS_DIFF_WARPS": "8", "HARNESS_DIFF_K": "16", "HARNESS_DIFF_PROGRAMS_PER_SM": "2",
           "HARNESS_DIFF_SLOT_MB": "64", "HARNESS_DIFF_SLOTS": "5", "HARNESS_DIFF_READERS": "7"}
    assert DiffSettings.from_config(from_env(env)) == DiffSettings(
        threads=3, kernel="eager", block=2048, warps=8, k_group=16, programs_per_sm=2, slot_bytes=64 << 20,
        slots=5, readers=7)
    assert DiffSettings(readers=7).reader_threads == 7


@pytest.mark.parametrize("env, message", [
    ({"HARNESS_DIFF_KERNEL": "cutlass"}, r"HARNESS_DIFF_KERNEL='cutlass': not one of triton, eager"),
    ({"HARNESS_DIFF_BLOCK": "0"}, r"HARNESS_DIFF_BLOCK=0: must be at least 1"),
    ({"HARNESS_DIFF_THREADS": "-1"}, r"HARNESS_DIFF_THREADS=-1: must be at least 0"),
])
def test_a_bad_value_names_its_variable(env, message):
    with pytest.raises(HarnessError, match=message):
        DiffSettings.from_config(from_env(env))


def test_the_cpu_engine_takes_its_threads_from_the_settings(pair, pool_sizes):
    one = compare(*pair, device="cpu", progress=False, settings=DiffSettings(threads=1))
    five = compare(*pair, device="cpu", progress=False, settings=DiffSettings(threads=5))
    assert pool_sizes == [1, 5]
    assert one.total.l2 == pytest.approx(five.total.l2, rel=1e-12)


def test_the_cli_passes_the_environment_down(pair, pool_sizes, monkeypatch, capsys):
    monkeypatch.setenv("HARNESS_DIFF_THREADS", "5")  # not torch's own count on any test machine
    assert main(["diff", str(pair[0]), str(pair[1]), "--device", "cpu", "--no-progress"]) == 0
    assert pool_sizes == [5]
    monkeypatch.setenv("HARNESS_DIFF_KERNEL", "cutlass")
    assert main(["diff", str(pair[0]), str(pair[1]), "--device", "cpu", "--no-progress"]) == 2
    assert "HARNESS_DIFF_KERNEL='cutlass'" in capsys.readouterr().err
