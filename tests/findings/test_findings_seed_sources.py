"""C6's and C7's sources per training seed (``--harness-seeds N``: one per seed, as the weight claims'
``diff_sources``; seed None for one), each with the graph's base model beside it for the rows' ``base_value``.
Real builds of a two-node micro plan (base, sft_d0) on the CPU, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.findings import sources
from harness.findings.session import FindingsSession, Options
from harness.findings.verdict import evaluate

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"

C7 = '''id = "C7"
kind = "similarity"
roles = ["node"]
data_roles = ["own"]
statement = "a test of the per-seed sources"
reference_table = "none"
negative_control = "none"
pairs = [{ node = "sft_d0", own = "d0" }]

[[check]]
label = "BLEU(own)-BLEU(other)"
statistic = "own_data_margin"
params = { metric = "BLEU" }
comparator = ">"
threshold = -1000.0
reason = "a test of the sources, not of the claim"
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seeds")
    text = MICRO.read_text(encoding="utf-8").split("[[nodes]]", 1)[0].replace('name = "micro"', 'name = "ms"')
    text += '[[nodes]]\nname = "base"\nmethod = "base"\n\n[[nodes]]\nname = "sft_d0"\nmethod = "sft"\n' \
            'dataset = "d0"\nparent = "base"\n'
    (d / "ms.toml").write_text(text, encoding="utf-8")
    claims = d / "claims"
    claims.mkdir()
    (claims / "c6.toml").write_text((ROOT / "fixtures" / "claims" / "c6_eos_learned.toml").read_text()
                                    .replace('pairs = [{ node = "sft_d0" }, { node = "sft_d1" }]',
                                             'pairs = [{ node = "sft_d0" }]').replace("limit = 100", "limit = 4")
                                    .replace('pairs = ["sft_d0", "sft_d1"]', 'pairs = ["sft_d0"]'))
    (claims / "c7.toml").write_text(C7)
    return {"plan": d / "ms.toml", "claims": claims, "fx": d / "fx"}


def session(setup, seeds: int) -> FindingsSession:
    return FindingsSession(Options(root=ROOT, plan_path=setup["plan"], plan_given=True, claims_dir=setup["claims"],
                                   fixtures_dir=str(setup["fx"]), device="cpu", run="r", seeds=seeds),
                           say=lambda _: None)


def case(fs: FindingsSession, claim: str):
    c = next(c for c in fs.cases() if c.spec.id == claim and c.control is None)
    fs.prepare(c)
    return c


@pytest.mark.parametrize("seeds, want", [(1, [None]), (2, [0, 1])])
def test_c6_has_one_source_per_training_seed_with_its_base(setup, seeds, want):
    fs = session(setup, seeds)
    c = case(fs, "C6")
    got = sources.generations(fs, c.spec, c.pair, None)
    assert [s for s, _ in got] == want
    for seed, src in got:
        assert src.base_source is not None and src.base_source is not src
        rows = {r.check: r for r in evaluate(c.spec, src, c.pair, seed=seed)}
        assert rows["P(stop | reply)"].base_value is not None and rows["stop rate"].base_value is not None
        assert rows["P(stop | reply) gain"].measured == pytest.approx(
            rows["P(stop | reply)"].measured - rows["P(stop | reply)"].base_value)
        assert rows["stop rate"].verdict == "info"
        assert {r.seed for r in rows.values()} == {seed}
    if seeds == 2:  # two seeds train two different nodes, so their P(stop | reply) differ
        a, b = (src.stop_probs(4).probs for _, src in got)
        assert a != b
        assert got[0][1].base_source.stop_probs(4) == got[1][1].base_source.stop_probs(4)  # one base for both


@pytest.mark.parametrize("seeds, want", [(1, [None]), (2, [0, 1])])
def test_c7_has_one_table_per_training_seed_with_the_base_row(setup, seeds, want):
    fs = session(setup, seeds)
    c = case(fs, "C7")
    got = sources.similarity(fs, c.spec, c.pair, None)
    assert [s for s, _ in got] == want
    for seed, table in got:
        assert "base" in table.rows and "sft_d0" in table.rows
        [row] = evaluate(c.spec, table, c.pair, seed=seed)
        want_base = table.cell("base", "BLEU(D0)") - table.cell("base", "BLEU(D1)")
        assert row.base_value == pytest.approx(want_base)
        assert row.measured == pytest.approx(table.cell("sft_d0", "BLEU(D0)") - table.cell("sft_d0", "BLEU(D1)"))
