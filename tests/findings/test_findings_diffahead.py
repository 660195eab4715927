"""The claims session computes the weight diffs its cases (and the report's plots) will read during the build
(harness.findings.diffahead), into the cache the statistics read, so that the statistics compute none; the diffs
it computes are exactly those the statistics and the plots read, with the same values as when the statistics
compute them (``HARNESS_LEGACY_PREFETCH=1``).

Real training on the micro plan (seconds on the CPU) and the real diff engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from harness.config import RunConfig
from harness.findings import load_spec
from harness.findings.diffs import DiffSource
from harness.findings.report import conflict_pairs, plot_graph
from harness.findings.session import FindingsSession, Options
from harness.findings.statistics import STATISTICS, diffs_read
from harness.findings.verdict import evaluate

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"
CLAIMS = ROOT / "fixtures" / "claims"

# micro: base -> sft_d0 -> dpo_d1@sft_d0, orpo_d1@sft_d0. One spec of three roles (a ratio of L2s, sign conflicts
# with a reference, a depth trend), with a negative control (a variant graph); one of one role whose depth check
# reads the statistic's default diff.
SPEC = '''id = "MYA"
kind = "weights"
statement = "a test of the diffs computed ahead, not a claim"
reference_table = "none"
roles = ["m", "start", "o"]
pairs = [{ m = "dpo_d1@sft_d0", start = "sft_d0", o = "orpo_d1@sft_d0" }]

[[check]]
label = "L2(m,base)/L2(m,parent)"
statistic = "l2_ratio"
params = { num = ["base", "m"], den = ["parent(m)", "m"] }
comparator = ">"
threshold = 0.0
reason = "a reading"

[[check]]
label = "conflicts m,o"
statistic = "conflict_ratio"
params = { num = ["m", "o", "base"], den = ["m", "o", "start"], field = "conflict_rate" }
comparator = ">"
threshold = 0.0
reason = "a reading"

[[check]]
label = "depth of o"
statistic = "depth_quarter_ratio"
params = { diff = ["start", "o"] }
comparator = ">"
threshold = 0.0
reason = "a reading"

[[negative_control]]
variant = "zero_step"
expect = "fail"
about = "a DPO that takes no step"
override = { nodes."dpo_d1@sft_d0" = { max_steps = 0 }, only = ["dpo_d1@sft_d0", "orpo_d1@sft_d0"] }
'''

NODE_SPEC = '''id = "MYB"
kind = "weights"
statement = "a test of the diffs computed ahead, not a claim"
reference_table = "none"
roles = ["node"]
negative_control = "none: a test"
pairs = [{ node = "sft_d0" }]

[[check]]
label = "depth"
statistic = "depth_quarter_ratio"
comparator = ">"
threshold = 0.0
reason = "a reading of the statistic's default diff"
'''


class Recording:
    """A weight source that records each diff a statistic (or the plots) reads, and reads it from ``source``."""

    def __init__(self, source: Any) -> None:
        self.source, self.read = source, []
        self.nodes = source.nodes

    def diff(self, a: str, b: str, ref: str | None = None) -> Any:
        self.read.append((a, b, ref))
        return self.source.diff(a, b, ref)

    def parent(self, node: str) -> str | None:
        return self.source.parent(node)

    def base(self) -> str:
        return self.source.base()


@pytest.fixture(scope="module")
def claims(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("diffahead") / "claims"
    d.mkdir()
    (d / "mya.toml").write_text(SPEC, encoding="utf-8")
    (d / "myb.toml").write_text(NODE_SPEC, encoding="utf-8")
    return d


def fixtures_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("HARNESS_FIXTURES_DIR") or tmp_path / "fx")


def session(claims: Path, fx: Path, legacy: bool = False, devices: str | None = None, run: str = "ahead",
            said: list[str] | None = None) -> FindingsSession:
    env = RunConfig(legacy_prefetch=legacy, devices=devices)
    return FindingsSession(Options(root=ROOT, plan_path=MICRO, plan_given=True, claims_dir=claims,
                                   fixtures_dir=str(fx), device="cpu", run=run, env=env),
                           say=(said.append if said is not None else lambda m: None))


def built(fs: FindingsSession) -> list:
    """Every case of ``fs`` planned and prepared (the first prepare builds them all)."""
    cases = fs.cases()
    fs.plan_cases(cases)
    fs.prepare(cases[0])
    return cases


def statistics(fs: FindingsSession, cases: list, wrap: Any = None) -> tuple[dict, list[Any]]:
    """Every case's rows (measured value per case, check) through the session's diff sources (each wrapped by
    ``wrap`` when given), then the report's plots; returns the values and the sources the statistics read."""
    values, used = {}, []
    for case in cases:
        fs.prepare(case)
        for seed, src in fs.diff_sources(case.control):
            used.append(src)
            for row in evaluate(case.spec, wrap(src) if wrap else src, case.pair, seed=seed):
                values[(case.id, row.check)] = row.measured
    return values, used


def computed(sources: list[DiffSource]) -> int:
    """The diffs ``sources`` computed (each source once: the plan's are the same objects for every case)."""
    return sum(s.computed for s in {id(s): s for s in sources}.values())


def plot_reads(fs: FindingsSession, folder: Path) -> set[Path]:
    """The cache files of the diffs the report's plots read (plot_graph through a recording source)."""
    src = fs.diff_sources()[0][1]
    rec = Recording(src)
    plot_graph(rec, fs.plan, folder, "r", conflict_pairs(fs.specs(), src))
    return {src.cache_file(*t) for t in rec.read}


def test_the_diffs_are_computed_ahead_exactly_as_the_statistics_and_plots_read_them(claims, tmp_path):
    fx = fixtures_dir(tmp_path)
    # what the statistics and the plots read: recorded on a session with nothing computed ahead
    fs0 = session(claims, fx, legacy=True, run="record")
    cases = built(fs0)
    recorders: list[Recording] = []
    statistics(fs0, cases, lambda s: recorders.append(Recording(s)) or recorders[-1])
    read = {r.source.cache_file(*t) for r in recorders for t in r.read} | plot_reads(fs0, tmp_path / "p0")
    assert len(read) == 11, read  # the plan's 5 + its control's 4 (base, sft_d0 and orpo shared) + the plots' 2

    # the switch on: the statistics compute every diff, none is computed ahead
    for f in read:
        f.unlink()
    fs1 = session(claims, fx, legacy=True, run="legacy")
    cases = built(fs1)
    assert fs1.ahead is None and fs1.builds.watch is None
    before, used = statistics(fs1, cases)
    assert computed(used) == 10
    fs1.plot(tmp_path / "p1", "r")
    assert computed(used) == 11 and all(f.is_file() for f in read)

    # by default: the build's end leaves them computed ahead, into the same cache files; the statistics and
    # the plots compute none, and measure the same values
    for f in read:
        f.unlink()
    said: list[str] = []
    fs2 = session(claims, fx, run="ahead", said=said)
    cases = built(fs2)
    ahead = fs2.ahead
    assert ahead is not None
    fs2.diff_sources()  # the statistics' sources come once every diff ahead is done
    assert {r.outcome for r in ahead.records} == {"computed"} and len(ahead.records) == 11
    assert all(f.is_file() for f in read)
    assert {r.file for r in ahead.records} == read  # neither more nor less than what is read
    after, used = statistics(fs2, cases)
    fs2.plot(tmp_path / "p2", "r")
    assert computed(used) == 0
    assert after == before and len(after) == 7
    assert any(line.startswith("weight diffs ahead: 11 computed (") for line in said), said
    log = fs2.log_path.read_text(encoding="utf-8")
    assert "diffs ahead: micro seed 0: diff(base, dpo_d1@sft_d0) computed in" in log
    assert "diffs ahead: micro [variant zero_step] seed 0: diff(sft_d0, dpo_d1@sft_d0) computed in" in log


def test_during_the_build_each_diff_starts_once_its_nodes_exist(claims, tmp_path):
    """Nodes that train in worker processes (two device slots): the diffs of sft_d0 against the base are
    queued as sft_d0 is built, and computed while the preference nodes still train; those of the preference
    nodes are queued as they are built. The timing has the seconds the thread spent during the build."""
    fx = tmp_path / "fx-fresh"  # a fresh cache: every node trains in this build
    fs = session(claims, fx, devices="a,b", run="during")
    cases = fs.cases()
    fs.plan_cases([c for c in cases if c.control is None])
    fs.prepare(cases[0])
    ahead = fs.ahead
    assert fs.builds.graph_of(fs.plan).trained
    end = ahead.build_end
    fs.diff_sources()
    by = {r.triple: r for r in ahead.records}
    assert set(by) == {("base", "dpo_d1@sft_d0", None), ("sft_d0", "dpo_d1@sft_d0", None),
                       ("dpo_d1@sft_d0", "orpo_d1@sft_d0", "base"), ("dpo_d1@sft_d0", "orpo_d1@sft_d0", "sft_d0"),
                       ("sft_d0", "orpo_d1@sft_d0", None), ("sft_d0", "base", None), ("base", "sft_d0", None)}
    assert all(r.outcome == "computed" and r.queued < end for r in ahead.records)
    first, last = by[("base", "sft_d0", None)], by[("dpo_d1@sft_d0", "orpo_d1@sft_d0", "base")]
    assert first.queued < first.ended < end and first.queued < last.queued  # while dpo and orpo trained
    assert "weight diffs during the build" in fs.timing.phases and fs.timing.phases["weight diffs during the build"] > 0
    _, used = statistics(fs, [c for c in cases if c.control is None])
    assert computed(used) == 0


def test_each_graph_a_weights_case_reads_is_watched_and_the_plots_only_on_the_first(claims, tmp_path):
    """Under two training seeds: the plan under each seed and the control's variant carry the cases that read
    them; the plots (a case on the plan runs) the plan under its own seed. Without a weights case, nothing."""
    from harness.findings.diffahead import start

    fs = FindingsSession(Options(root=ROOT, plan_path=MICRO, plan_given=True, claims_dir=claims, seeds=2,
                                 fixtures_dir=str(tmp_path), device="cpu", run="seeds"), say=lambda m: None)
    ahead = start(fs, fs.cases(), fs.diff_source)
    try:
        wants = {k: (len(w.cases), w.plot_specs is not None) for k, w in ahead.wants.items()}
    finally:
        ahead.join()
    assert wants == {("micro", None, 0, "tiny"): (2, True), ("micro", None, 1, "tiny"): (2, False),
                     ("micro", "zero_step", 0, "tiny"): (1, False)}
    control = start(fs, [c for c in fs.cases() if c.control is not None], fs.diff_source)
    control.join()
    assert {k: w.plot_specs for k, w in control.wants.items()} == {("micro", "zero_step", 0, "tiny"): None}
    assert start(fs, [], fs.diff_source) is None


def test_no_diff_runs_beside_a_build_in_this_process(claims, tmp_path):
    """The CPU's default build trains its nodes in this process, one at a time: the diffs wait for its end
    (neither this process's cores and torch threads nor a CUDA graph capture are shared with training)."""
    fs = session(claims, tmp_path / "fx-fresh", run="here")
    cases = [c for c in fs.cases() if c.id == "MYB-sft_d0"]
    fs.plan_cases(cases)
    fs.prepare(cases[0])
    ahead = fs.ahead
    assert fs.builds.graph_of(fs.plan).trained == ["base", "sft_d0"]
    fs.diff_sources()
    assert {r.triple for r in ahead.records} == {("sft_d0", "base", None), ("base", "sft_d0", None)}
    assert all(r.outcome == "computed" and r.queued < ahead.build_end < r.started for r in ahead.records)
    assert "weight diffs during the build" not in fs.timing.phases


def test_a_diff_that_fails_ahead_is_logged_and_left_to_the_statistics(claims, tmp_path):
    """The thread's failure is no session failure: the log says it, and the statistic that reads the diff
    computes it again and raises its own error."""
    fx = fixtures_dir(tmp_path)
    fs = session(claims, fx, run="fails")
    plain = fs.diff_source

    def broken(plan: Any, graph: Any) -> DiffSource:
        src = plain(plan, graph)

        def compare(a, b, base=None, **kw):
            raise RuntimeError(f"no diff of {Path(b).name} here")

        src.compare, src.cache_dir = compare, tmp_path / "no-cache"  # nothing cached: every diff computes
        return src

    fs.diff_source = broken  # the sources of both the thread and the statistics
    cases = [c for c in fs.cases() if c.id == "MYB-sft_d0"]
    fs.plan_cases(cases)
    fs.prepare(cases[0])
    ahead = fs.ahead
    fs.diffs_ahead_done()
    assert ("sft_d0", "base", None) in {r.triple for r in ahead.records}  # the check's (and the plots' diffs)
    assert {r.outcome for r in ahead.records} == {"failed"}
    assert "RuntimeError: no diff of sft_d0" in fs.log_path.read_text(encoding="utf-8")
    with pytest.raises(RuntimeError, match="no diff of"):
        statistics(fs, cases)


WEIGHT_SPECS = [p for p in sorted(CLAIMS.glob("*.toml")) if 'kind = "weights"' in p.read_text(encoding="utf-8")]


def test_the_shipped_weight_specs_are_all_checked():
    assert [p.stem[:2] for p in WEIGHT_SPECS] == ["c1", "c2", "c3", "c4", "c5"]


@pytest.mark.parametrize("spec_path", WEIGHT_SPECS, ids=lambda p: p.stem)
def test_the_diffs_read_are_those_the_statistics_read(spec_path, family):
    """Every shipped weights spec, on each of its pairs (the synthetic study family has their nodes): the diffs
    ``statistics.diffs_read`` lists for its checks are exactly those the statistics read."""
    spec = load_spec(spec_path)
    assert spec.kind == "weights"
    src = family()
    for pair in spec.pairs:
        rec = Recording(src)
        evaluate(spec, rec, pair)
        listed = [t for c in spec.checks for t in diffs_read(src, pair, c.statistic, c.kwargs())]
        assert set(listed) == set(rec.read) and rec.read, (pair.label, listed, rec.read)


def test_the_diffs_read_follow_a_statistics_defaults(tmp_path, family):
    """A check without ``diff`` reads the statistic's default (``node`` against ``parent(node)``)."""
    (tmp_path / "myb.toml").write_text(NODE_SPEC.replace('"sft_d0"', '"dpo_d0@sft_d2"'), encoding="utf-8")
    spec = load_spec(tmp_path / "myb.toml")
    src, pair = family(), spec.pairs[0]
    rec = Recording(src)
    evaluate(spec, rec, pair)
    assert diffs_read(src, pair, "depth_quarter_ratio", {}) == rec.read == [("dpo_d0@sft_d2", "sft_d2", None)]
    assert "depth_quarter_ratio" in STATISTICS
