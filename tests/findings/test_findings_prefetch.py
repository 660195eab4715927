"""The claims' generations computed inside the build (:mod:`harness.findings.prefetch`): on the micro plan over two
fake device slots, the build's workers write every generation and P(stop | reply) cache file the selected cases
read, as each node is built (or, for nodes found cached, in units of their own); the claims phase then finds them
all and writes none. ``HARNESS_LEGACY_PREFETCH=1`` (generation in this process after the build) writes the same
files, byte for byte, and the findings measure the same values."""

from __future__ import annotations

import shutil
from pathlib import Path

from harness.config import RunConfig
from harness.findings.kinds import KINDS
from harness.findings.session import FindingsSession, Options
from harness.findings.verdict import evaluate

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "fixtures" / "plans" / "micro.toml"

# Greedy, sampled (one check with an integer temperature: it enters the key as the statistic casts it),
# P(stop | reply) of the node and of its base; a negative control's variant is a graph of its own.
GENERATIONS = '''id = "PF6"
kind = "generations"
roles = ["node"]
statement = "EOS is learned (a small copy of C6)."
reference_table = "none"
pairs = [{ node = "sft_d0" }]

[[check]]
statistic = "stop_prob"
comparator = ">="
threshold = 0.5
params = { limit = 4 }
reason = "r"

[[check]]
statistic = "stop_prob_gain"
comparator = ">"
threshold = 0.0
params = { limit = 3 }
reason = "r"

[[check]]
statistic = "stop_rate"
comparator = ">="
threshold = 0.9
reason = "r"

[[check]]
statistic = "sampled_stop_rate"
comparator = ">="
threshold = 0.9
params = { temperature = 0.7, top_p = 0.9, seed = 0 }
reason = "r"

[[check]]
statistic = "loop_rate"
comparator = "<="
threshold = 0.5
params = { sampled = true, temperature = 1, top_p = 0.95, seed = 3 }
reason = "r"

[[negative_control]]
variant = "masked"
expect = "fail"
about = "stop labels masked"
override = { sft = { mask_stop_labels = true }, only = ["sft_d0"] }
'''

SIMILARITY = '''id = "PF7"
kind = "similarity"
roles = ["node"]
data_roles = ["own"]
statement = "Each SFT model's generations are most similar to its own data (a small copy of C7)."
reference_table = "none"
negative_control = "none here"
pairs = [{ node = "sft_d0", own = "d0" }]

[[check]]
statistic = "own_data_margin"
params = { metric = "BLEU" }
comparator = ">"
threshold = 0.0
reason = "r"
'''


def claims(tmp_path: Path) -> Path:
    folder = tmp_path / "claims"
    folder.mkdir()
    (folder / "pf6.toml").write_text(GENERATIONS, encoding="utf-8")
    (folder / "pf7.toml").write_text(SIMILARITY, encoding="utf-8")
    return folder


def caches(fx: Path) -> dict[str, tuple[int, bytes]]:
    """Every generation and P(stop | reply) cache file: its mtime and bytes."""
    return {str(p.relative_to(fx)): (p.stat().st_mtime_ns, p.read_bytes())
            for d in ("generations", "stopprob") if (fx / d).is_dir() for p in sorted((fx / d).iterdir())}


def run_session(fx: Path, claims_dir: Path, legacy: bool) -> tuple[dict, dict, dict, FindingsSession]:
    """The cases as the runner runs them: the first prepare builds (and, unless ``legacy``, prefetches); then each
    case's sources and statistics. Returns (caches after the build, caches at the end, measured values, session)."""
    fs = FindingsSession(Options(root=ROOT, plan_path=MICRO, plan_given=True, claims_dir=claims_dir,
                                 fixtures_dir=str(fx), device="cpu", run="pf",
                                 env=RunConfig(devices="a,b", legacy_prefetch=legacy)), say=lambda m: None)
    cases = fs.cases()
    assert len(cases) == 3, [c.id for c in cases]
    fs.plan_cases(cases)
    fs.prepare(cases[0])
    built = caches(fx)
    values = {}
    for case in cases:
        r = fs.prepare(case)
        for seed, source in KINDS.get(case.spec.kind).builder()(fs, case.spec, case.pair, case.control):
            for row in evaluate(case.spec, source, case.pair, plan=r.plan.name, seed=seed):
                values[(case.id, row.check)] = (row.measured, row.base_value, row.note)
    return built, caches(fx), values, fs


def test_the_build_computes_the_claims_generations_and_legacy_computes_the_same(tmp_path):
    fx, claims_dir = tmp_path / "fx", claims(tmp_path)
    built, after, values, fs = run_session(fx, claims_dir, legacy=False)
    # Two graphs (the plan; the control's variant, whose sft_d0 has its own key and whose budget differs, as it
    # keeps only sft_d0). In each: sft_d0's and the base's greedy and two sampled eval generations (the rows' base
    # values sample the base too): 2 x (3 + 3); the persona generations of sft_d0 and the base (the plan only): 2.
    # P(stop | reply) at limits 4 and 3: sft_d0's in each graph (4), the base's on sft_d0's records (2: the same
    # records, template and base in both graphs).
    gens = [k for k in built if k.startswith("generations/")]
    probes = [k for k in built if k.startswith("stopprob/")]
    assert (len(gens), len(probes)) == (14, 6), sorted(built)
    assert after == built, "the claims phase computed (or rewrote) a generation the build had not"
    assert all(v[0] == v[0] for v in values.values()), values  # every check measured (no NaN)
    [record] = [b for b in fs.builds.timings if "[variant" not in b["graph"]]
    assert set(record["after_s"]) == {"base", "sft_d0"} and not record["after_errors"], record
    assert all(n["after_s"] is not None for n in record["nodes"]), record["nodes"]

    # the nodes cached: the build's units that train nothing compute the same files
    for d in ("generations", "stopprob"):
        shutil.rmtree(fx / d)
    built2, after2, values2, _ = run_session(fx, claims_dir, legacy=False)
    assert {k: v[1] for k, v in built2.items()} == {k: v[1] for k, v in built.items()}
    assert after2 == built2 and values2 == values

    # HARNESS_LEGACY_PREFETCH=1: nothing after the build; the claims phase writes the same bytes, the same values
    for d in ("generations", "stopprob"):
        shutil.rmtree(fx / d)
    built3, after3, values3, _ = run_session(fx, claims_dir, legacy=True)
    assert built3 == {}
    assert {k: v[1] for k, v in after3.items()} == {k: v[1] for k, v in built.items()}
    assert values3 == values
