"""Hypothesis properties of the diff engine on tiny random checkpoints of real architectures."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from diff_helpers import random_state, reference, write_checkpoint
from harness.diff import compare

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ARCHS = st.sampled_from(["llama", "neox", "gpt2"])
SEEDS = st.integers(0, 2**16)
LAYOUTS = st.sampled_from(["index", "single", "bare"])
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])
FIELDS = ("numel", "l1", "l2", "max_abs", "changed", "conflicts", "conflict_rate", "conflict_l2", "cosine")


def _diff(a, b, r=None, **kw):
    return compare(a, b, r, progress=False, device="cpu", **kw)


def _write(root: Path, name: str, tensors: dict, layout: str = "index", seed: int = 0) -> Path:
    return write_checkpoint(root / name, tensors, layout, seed)


def _close(x, y, rtol=1e-6, atol=1e-9):
    if x is None or y is None:
        return x is None and y is None
    return math.isclose(float(x), float(y), rel_tol=rtol, abs_tol=atol)


@SETTINGS
@given(arch=ARCHS, seed=SEEDS, dtype=DTYPES, with_ref=st.booleans(), layout=LAYOUTS)
@example(arch="llama", seed=0, dtype=torch.bfloat16, with_ref=True, layout="index")
def test_agrees_with_float64_numpy(arch_layouts, arch, seed, dtype, with_ref, layout):
    lay = arch_layouts[arch]
    a = random_state(lay, seed, dtype=dtype)
    b = random_state(lay, seed + 1, dtype=dtype, zero_frac=0.3)
    r = random_state(lay, seed + 2, dtype=dtype) if with_ref else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rep = _diff(_write(root, "a", a, layout, seed), _write(root, "b", b, "index", seed + 1),
                    _write(root, "r", r, "single") if with_ref else None)
    ref = reference(a, b, r)
    groups = {"total": rep.total, "other": rep.other, **{s.layer: s for s in rep.layers}}
    assert set(groups) == set(ref) | ({"other"} if "other" not in ref else set())
    for key, want in ref.items():
        got = groups[key]
        for f in FIELDS:
            if f in want:
                assert _close(getattr(got, f), want[f]), (key, f, getattr(got, f), want[f])
            elif f.startswith("conflict") or f == "cosine":
                assert getattr(got, f) is None


@SETTINGS
@given(arch=ARCHS, seed=SEEDS, dtype=DTYPES)
def test_self_diff_is_zero_and_symmetry(arch_layouts, arch, seed, dtype):
    lay = arch_layouts[arch]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pa = _write(root, "a", random_state(lay, seed, dtype=dtype), "index", seed)
        pb = _write(root, "b", random_state(lay, seed + 1, dtype=dtype), "index", seed + 7)
        pr = _write(root, "r", random_state(lay, seed + 2, dtype=dtype), "single")
        same = _diff(pa, pa, pr)
        ab, ba = _diff(pa, pb, pr), _diff(pb, pa, pr)
    t = same.total
    assert (t.l1, t.l2, t.max_abs, t.changed, t.conflicts, t.conflict_l2) == (0, 0, 0, 0, 0, 0)
    assert t.cosine == pytest.approx(1.0, rel=1e-6)
    for x, y in zip([ab.total, *ab.layers, ab.other], [ba.total, *ba.layers, ba.other]):
        for f in FIELDS:
            assert _close(getattr(x, f), getattr(y, f), rtol=1e-12), f


@SETTINGS
@given(arch=ARCHS, seed=SEEDS)
def test_triangle_inequality_and_totals(arch_layouts, arch, seed):
    lay = arch_layouts[arch]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        p = [_write(root, n, random_state(lay, seed + i), "index", seed + i) for i, n in enumerate("abc")]
        ab, bc, ac = _diff(p[0], p[1], p[2]), _diff(p[1], p[2]), _diff(p[0], p[2])
    assert ac.total.l2 <= ab.total.l2 + bc.total.l2 + 1e-9
    for rep in (ab, ac):
        parts = [*rep.layers, rep.other]
        assert rep.total.l1 == pytest.approx(sum(s.l1 for s in parts), rel=1e-12)
        assert rep.total.l2 == pytest.approx(math.sqrt(sum(s.l2 ** 2 for s in parts)), rel=1e-12)
        assert rep.total.numel == sum(s.numel for s in parts)
        assert rep.total.changed == sum(s.changed for s in parts)
        assert rep.total.max_abs == max(s.max_abs for s in parts)
        assert rep.total.l1 == pytest.approx(sum(s.l1 for s in rep.modules), rel=1e-12)
    assert ab.total.conflicts == sum(s.conflicts for s in [*ab.layers, ab.other])
    assert ab.total.conflict_l2 == pytest.approx(
        math.sqrt(sum(s.conflict_l2 ** 2 for s in [*ab.layers, ab.other])), rel=1e-12)
    assert ab.total.conflict_l2 <= ab.total.l2


@SETTINGS
@given(arch=ARCHS, seed=SEEDS, k=st.floats(-8, 8).filter(lambda k: abs(k) > 1e-3))
def test_scaling_a_delta_scales_l1_and_l2(arch_layouts, arch, seed, k):
    lay = arch_layouts[arch]
    zero = {n: torch.zeros(s) for n, s in lay.items()}
    delta = random_state(lay, seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pz = _write(root, "z", zero, "single")
        one = _diff(pz, _write(root, "d", delta, "index", seed))
        scaled = _diff(pz, _write(root, "k", {n: t * k for n, t in delta.items()}, "index", seed + 1))
    assert scaled.total.l1 == pytest.approx(abs(k) * one.total.l1, rel=1e-6)
    assert scaled.total.l2 == pytest.approx(abs(k) * one.total.l2, rel=1e-6)
    for s1, sk in zip(one.layers, scaled.layers):
        assert sk.l2 == pytest.approx(abs(k) * s1.l2, rel=1e-6)


@SETTINGS
@given(arch=ARCHS, seed=SEEDS, zero_frac=st.floats(0.0, 0.9))
@example(arch="gpt2", seed=3, zero_frac=0.5)
def test_opposite_task_vectors_conflict_everywhere(arch_layouts, arch, seed, zero_frac):
    lay = arch_layouts[arch]
    base = {n: torch.zeros(s) for n, s in lay.items()}
    tau = random_state(lay, seed, zero_frac=zero_frac)
    nonzero = sum(int((t != 0).sum()) for t in tau.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pr = _write(root, "r", base, "single")
        pa = _write(root, "a", tau, "index", seed)
        pb = _write(root, "b", {n: -t for n, t in tau.items()}, "index", seed + 3)
        opposite, same = _diff(pa, pb, pr), _diff(pa, pa, pr)
    assert opposite.total.conflicts == nonzero
    assert opposite.total.conflict_l2 == pytest.approx(opposite.total.l2, rel=1e-9)
    assert opposite.total.cosine == pytest.approx(-1.0, rel=1e-9)
    assert same.total.conflicts == 0 and same.total.conflict_l2 == 0


@SETTINGS
@given(arch=ARCHS, seed=SEEDS, dtype=DTYPES)
def test_shard_layout_does_not_change_results(arch_layouts, arch, seed, dtype):
    lay = arch_layouts[arch]
    a = random_state(lay, seed, dtype=dtype)
    b = random_state(lay, seed + 1, dtype=dtype)
    r = random_state(lay, seed + 2, dtype=dtype)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i, layout in enumerate(["bare", "single", "index", "index"]):
            pa = _write(root, f"a{i}", a, layout, seed + 10 * i)
            pb = _write(root, f"b{i}", b, layout, seed + 10 * i + 1)
            pr = _write(root, f"r{i}", r, layout, seed + 10 * i + 2)
            d = _diff(pa, pb, pr).to_dict()
            d.pop("meta")
            results.append(d)
    assert all(x == results[0] for x in results[1:])


def test_nan_and_inf_are_counted_not_crashed_on(arch_layouts, tmp_path):
    lay = arch_layouts["llama"]
    a = random_state(lay, 1)
    b = random_state(lay, 2)
    r = random_state(lay, 3)
    name = "model.layers.1.mlp.up_proj.weight"
    b[name] = b[name].clone()
    b[name].view(-1)[:3] = float("nan")
    r[name] = r[name].clone()
    r[name].view(-1)[5:9] = float("inf")
    rep = _diff(_write(tmp_path, "a", a), _write(tmp_path, "b", b), _write(tmp_path, "r", r))
    assert (rep.total.nan, rep.total.inf) == (3, 4)
    assert (rep.layers[1].nan, rep.layers[1].inf) == (3, 4)
    assert all(math.isfinite(v) for v in (rep.total.l1, rep.total.l2, rep.total.conflict_l2, rep.total.cosine))
    bad = torch.zeros(lay[name], dtype=torch.bool)
    bad.view(-1)[:9] = True
    bad.view(-1)[3:5] = False
    clean = {k: {n: (torch.where(bad, 0.0, t) if n == name else t) for n, t in d.items()} for k, d in
             {"a": a, "b": b, "r": r}.items()}
    want = reference(clean["a"], clean["b"], clean["r"])["total"]
    assert rep.total.l2 == pytest.approx(want["l2"], rel=1e-6)
    assert rep.total.conflicts == want["conflicts"]
    assert "3 NaN, 4 Inf" in rep.table()
