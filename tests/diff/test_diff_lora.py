"""LoRA adapters through real peft: adapter-exact == fp32 merged diff, rsLoRA, factored L2."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from diff_helpers import tiny_configs
from harness.diff import compare
from harness.diff.lora import AdapterCheckpoint, LoraDelta
from harness.errors import HarnessError

FIELDS = ("l1", "l2", "max_abs", "conflict_l2", "cosine")


def _peft_pair(tmp_path, arch: str, seed: int, **lora_kw):
    """Save a tiny base, a LoRA adapter on it (random B), and the fp32 merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base_dir = tmp_path / f"base-{arch}"
    if not base_dir.exists():
        AutoModelForCausalLM.from_config(tiny_configs()[arch]).save_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    targets = ["c_attn", "c_fc"] if arch == "gpt2" else "all-linear"
    cfg = LoraConfig(r=lora_kw.pop("r", 4), lora_alpha=lora_kw.pop("lora_alpha", 16),
                     target_modules=targets, lora_dropout=0.0, **lora_kw)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)  # peft initialises B to zero: make the delta non-zero
    adapter_dir = tmp_path / f"adapter-{arch}-{seed}"
    peft_model.save_pretrained(adapter_dir)
    merged_dir = tmp_path / f"merged-{arch}-{seed}"
    peft_model.merge_and_unload().save_pretrained(merged_dir)
    return base_dir, adapter_dir, merged_dir


def _assert_reports_close(x, y, rtol=1e-5):
    for sx, sy in zip([x.total, *x.layers, x.other], [y.total, *y.layers, y.other]):
        for f in FIELDS:
            vx, vy = getattr(sx, f), getattr(sy, f)
            assert (vx is None) == (vy is None), f
            if vx is not None:
                assert vx == pytest.approx(vy, rel=rtol, abs=1e-7), (f, sx.layer, vx, vy)
        assert sx.numel == sy.numel
        assert sx.changed == sy.changed
        assert sx.conflicts == sy.conflicts


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_adapter_exact_equals_fp32_merged_diff(tmp_path, arch):
    kw = {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"down_proj": 4}} if arch == "llama" else {}
    base, ad1, m1 = _peft_pair(tmp_path, arch, 1, **kw)
    _, ad2, m2 = _peft_pair(tmp_path, arch, 2)
    exact = compare(ad1, base, progress=False, device="cpu")
    merged = compare(m1, base, progress=False, device="cpu")
    assert exact.total.l2 > 0
    _assert_reports_close(exact, merged)
    # Two adapters on one base, with the base as reference: conflicts and cosine match too.
    _assert_reports_close(compare(ad1, ad2, base, progress=False, device="cpu"),
                          compare(m1, m2, base, progress=False, device="cpu"))


def test_rslora_scale(tmp_path):
    base, ad, merged = _peft_pair(tmp_path, "llama", 3, r=4, lora_alpha=8, use_rslora=True)
    ckpt = AdapterCheckpoint(ad)
    deltas = list(ckpt._deltas.values())
    assert deltas and all(d.scale == pytest.approx(8 / math.sqrt(4)) for d in deltas)
    factored = math.sqrt(sum(d.sumsq() for d in deltas))
    rep = compare(ad, base, progress=False, device="cpu")
    assert rep.total.l2 == pytest.approx(factored, rel=1e-6)
    assert rep.total.l2 == pytest.approx(compare(merged, base, progress=False, device="cpu").total.l2, rel=1e-5)
    # The plain LoRA scale alpha/r would be half of rsLoRA's alpha/sqrt(r) here.
    assert rep.total.l2 == pytest.approx(2 * factored * (8 / 4) / (8 / math.sqrt(4)), rel=1e-6)


@settings(max_examples=25, deadline=None)
@example(out=1, inn=1, r1=1, r2=1, s1=1.0, s2=-1.0, fan=False, seed=0)
@given(out=st.integers(1, 40), inn=st.integers(1, 40), r1=st.integers(1, 8), r2=st.integers(1, 8),
       s1=st.floats(-4, 4), s2=st.floats(-4, 4), fan=st.booleans(), seed=st.integers(0, 2**16))
def test_factored_l2_equals_materialised(out, inn, r1, r2, s1, s2, fan, seed):
    g = torch.Generator().manual_seed(seed)
    d1 = LoraDelta(torch.randn(r1, inn, generator=g), torch.randn(out, r1, generator=g), s1, fan)
    d2 = LoraDelta(torch.randn(r2, inn, generator=g), torch.randn(out, r2, generator=g), s2, fan)
    def dense64(d: LoraDelta) -> torch.Tensor:  # the float64 reference, materialised
        m = d.B.double() @ d.A.double() * d.scale
        return m.T if d.fan_in_fan_out else m

    m1, m2 = dense64(d1), dense64(d2)
    assert d1.materialize().shape == d1.shape == ((inn, out) if fan else (out, inn))
    assert d1.l2() == pytest.approx(float(m1.norm()), rel=1e-6, abs=1e-9)
    assert d1.dot(d2) == pytest.approx(float((m1 * m2).sum()), rel=1e-6, abs=1e-6)
    assert d1.minus(d2).l2() == pytest.approx(float((m1 - m2).norm()), rel=1e-6, abs=1e-6)
    from harness.diff.lora import sumsq_many

    assert sumsq_many([d1, d2, d1]) == pytest.approx([float((m1 ** 2).sum()), float((m2 ** 2).sum()),
                                                      float((m1 ** 2).sum())], rel=1e-6, abs=1e-9)
    rows = torch.cat([d1.rows(i, min(i + 3, d1.shape[0])) for i in range(0, d1.shape[0], 3)])
    assert torch.allclose(rows.double(), m1, rtol=1e-5, atol=1e-5)


def test_adapter_whose_base_does_not_match(tmp_path):
    from transformers import AutoModelForCausalLM, LlamaConfig

    base, ad, _ = _peft_pair(tmp_path, "llama", 4)
    other = tmp_path / "other-base"
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=48, hidden_size=24, intermediate_size=32,
                                                 num_hidden_layers=3, num_attention_heads=4,
                                                 num_key_value_heads=2)).save_pretrained(other)
    with pytest.raises(HarnessError, match=r"does not match its base .*other-base: tensor .*_proj.weight. is \(24, 32\) in the base but \(16, 32\)"):
        compare(ad, base, adapter_base=other, progress=False)


def test_unsupported_adapter_variants(tmp_path):
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, _, _ = _peft_pair(tmp_path, "llama", 5)
    for name, cfg, pattern in [
        ("dora", LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), r"use_dora"),
        ("ia3", IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]),
         r"peft_type=IA3"),
    ]:
        model = AutoModelForCausalLM.from_pretrained(base)
        folder = tmp_path / name
        get_peft_model(model, cfg).save_pretrained(folder)
        with pytest.raises(HarnessError, match=rf"unsupported adapter variant in .*{name}.*{pattern}"):
            compare(folder, base, progress=False)
    # A variant only visible in the tensors (config flag removed): DoRA's magnitude vector.
    cfg_path = tmp_path / "dora" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["use_dora"] = False
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match=r"unsupported adapter variant .*lora_magnitude_vector"):
        compare(tmp_path / "dora", base, progress=False)
