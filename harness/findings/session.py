"""The findings session: one object (kept in pytest's stash by the plugin) that owns the options, the
plan and its graphs, the claim cases, the recorded rows and the end-of-session work (files, plots,
baseline comparison). Plain Python: the plugin only wires it into pytest's hooks.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pytest

from harness.config import RunConfig
from harness.errors import HarnessError
from harness.findings.baseline import Comparison, compare
from harness.findings.builds import Builds, quiet
from harness.findings.diffs import DiffSource, NodeSet
from harness.findings.preflight import NodePreflight
from harness.findings.report import conflict_pairs, load_json, plot_graph, write
from harness.findings.spec import ClaimSpec, Control, Pair, load_specs
from harness.findings.timing import Timing
from harness.findings.verdict import INCONCLUSIVE, Aggregate, ClaimResult, aggregate, summary_line
from harness.versions import library_versions, version_changes

DEFAULT_PLAN = Path("fixtures") / "plans" / "tiny.toml"
CLAIMS_DIR = Path("fixtures") / "claims"


#: where the pytest plugin keeps the session (here, below both the plugin and its xdist glue)
SESSION = pytest.StashKey["FindingsSession"]()


def plan_path(option: str | None, root: Path) -> Path:
    """The plan file from ``--harness-plan`` (relative to the cwd, else the root), else tiny.toml."""
    p = Path(option) if option else root / DEFAULT_PLAN
    return p if p.is_absolute() or option is None else (Path.cwd() / p if (Path.cwd() / p).exists() else root / p)


def base_name(base: str, tiny: Any = None) -> str:
    """A plan base's readable identity: a hub id, a folder's or GGUF file's name, or for the tiny base
    ``tiny-<hash of its [tiny] table>`` (a wider tiny base is another base)."""
    if base == "tiny" and tiny is not None:
        import hashlib
        import json

        blob = json.dumps(dataclasses.asdict(tiny), sort_keys=True)
        return f"tiny-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"
    p = Path(base)
    return p.name if (p.is_absolute() or p.exists()) else base


def default_run_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def diff_cache_dir(fixtures_dir: str | Path | None, root: Path) -> Path:
    base = Path(fixtures_dir) if fixtures_dir else root / ".fixtures"
    return base / "diffs"


def node_set(plan: Any, graph: Any) -> NodeSet:
    names = list(plan.names)
    return NodeSet(paths={n: Path(graph.path(n)) for n in names},
                   parents={n: plan.node(n).parent for n in names},
                   keys={n: str(graph.key(n)) for n in names})


def training_seeds(plan: Any, n: int) -> list[int]:
    return [plan.seed + i for i in range(n)]


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    root: Path
    plan_path: Path
    plan_given: bool = False
    base: str | None = None
    variant: str | None = None  # --harness-variant NAME: the plan's [variants.NAME] applied
    claims_dir: Path | None = None
    findings_dir: Path | None = None
    fixtures_dir: str | None = None
    zoo: Path | None = None  # the folder of real tokenizer folders (--harness-zoo)
    run: str = ""
    baseline: str | None = None
    strict: bool = False
    seeds: int = 1
    device: str = "auto"
    judge_serve: str | None = None  # --judge-serve MODEL: served on loopback as the LLM judge
    env: RunConfig = field(default_factory=RunConfig)  # the HARNESS_* variables, read once by the plugin
    slot: str | None = None  # the GPU this process was pinned to (a pytest-xdist worker's), else None
    executor: str = "embedded"  # --harness-executor: who trains the nodes (embedded or ray)
    ray_address: str | None = None  # --harness-ray-address: the Ray cluster to join

    @property
    def claims(self) -> Path:
        return self.claims_dir or self.root / CLAIMS_DIR

    @property
    def findings(self) -> Path:
        return self.findings_dir or self.root / "findings"


@dataclass(frozen=True)
class Case:
    """One parametrized claim case: a spec's pair, on the plan or under a negative control's variant."""

    spec: ClaimSpec
    pair: Pair
    control: Control | None = None

    @property
    def id(self) -> str:
        tail = f"-control:{self.control.variant}" if self.control else ""
        return f"{self.spec.id}-{self.pair.label}{tail}"


@dataclass(frozen=True)
class Resolved:
    """A claim case resolved once per session (:meth:`FindingsSession.resolve`): the plan it reads (the plan,
    or its negative control's variant), the graphs it reads (that plan under every training seed, or the
    variant), the nodes it reads in them, or why it skips."""

    case: Case
    plan: Any
    plans: tuple[Any, ...]
    nodes: tuple[str, ...]
    skip: str | None = None


@dataclass(frozen=True)
class ZooCase:
    """One zoo tokenizer of a ``generations`` spec's ``zoo`` list: a small model is trained for it and its
    generations are checked like the graph's nodes (``claims/test_eos_learned.py``)."""

    spec: ClaimSpec
    tokenizer: str

    @property
    def id(self) -> str:
        return f"{self.spec.id}-zoo:{self.tokenizer}"

    @property
    def pair(self) -> Pair:
        return Pair((("tokenizer", f"zoo:{self.tokenizer}"),))


@dataclass
class Outcome:
    """What the end of a session wrote and found. Seeds whose verdicts disagree make their check inconclusive
    (``disagreements`` says which); an inconclusive check fails the session only under ``strict``
    (``--findings-strict``), a baseline regression always."""

    json_path: Path | None = None
    md_path: Path | None = None
    images: list[Path] = field(default_factory=list)
    comparison: Comparison | None = None
    disagreements: list[str] = field(default_factory=list)  # checks whose seeds' verdicts disagree
    errors: list[str] = field(default_factory=list)
    preflight: list[NodePreflight] = field(default_factory=list)  # each trained node's pre-flight
    version_changes: list[str] = field(default_factory=list)  # library versions, baseline -> this run
    checks: list[Aggregate] = field(default_factory=list)  # each check across training seeds
    strict: bool = False

    @property
    def inconclusive(self) -> list[Aggregate]:
        return [c for c in self.checks if c.verdict == INCONCLUSIVE and not c.control]

    @property
    def summary(self) -> str:
        """``findings: N pass, N fail, N inconclusive, N not measured`` (negative controls in a clause of their own)."""
        return summary_line(self.checks)

    @property
    def regressions(self) -> list:
        return self.comparison.failing if self.comparison else []

    @property
    def missing(self) -> list:
        return self.comparison.missing if self.comparison else []

    @property
    def postflight_errors(self) -> list[NodePreflight]:
        """Trained nodes whose saved folder would stop wrongly when served (their post-flight failed)."""
        return [p for p in self.preflight if p.post_failed]

    @property
    def failed(self) -> bool:
        return bool(self.regressions or (self.strict and self.inconclusive) or self.postflight_errors)


class FindingsSession:
    """Options, plan, graphs, sources, rows and the end-of-session work of one pytest session."""

    def __init__(self, options: Options, say: Callable[[str], None] = print) -> None:
        self.results: list[ClaimResult] = []  # the rows recorded in this session (:meth:`record`)
        self.options = options
        self.say = say
        self.outcome: Outcome | None = None
        self._plan: Any = None
        self._specs: list[ClaimSpec] | None = None
        self._memo: dict[Any, Any] = {}
        self.seeds: list[int] = []
        self.no_match: str | None = None  # what -k matching no claim case says (:meth:`keyword_matched`)
        self.claims_deselected = False  # some claim case was deselected (:meth:`deselected_claims`)
        self.merged_meta: dict[str, Any] = {}  # from pytest-xdist workers (:meth:`take_worker`)
        self.log_path = Path(options.fixtures_dir or options.root / ".fixtures") / "logs" / f"{options.run}.log"
        self.builds = Builds(options.fixtures_dir, options.device, lambda msg: self.say(msg), self.log_path,
                             options.env.devices, options.executor, options.ray_address,
                             together=not options.env.legacy_graphs)
        self._planned: list[Case] | None = None  # cases whose nodes the first prepare() builds
        self.merged_preflight: list[NodePreflight] = []  # from pytest-xdist workers
        self.merged_failures: list[str] = []  # the nodes pytest-xdist workers failed to build, as they said them
        self.timing = Timing()  # seconds per phase (harness.findings.timing), in the findings' meta
        self.ahead: Any = None  # the weight diffs computed during the first build (harness.findings.diffahead)

    def record(self, results: ClaimResult | Iterable[ClaimResult]) -> None:
        """Add result rows to this session's findings (terminal summary, JSON/Markdown files)."""
        self.results.extend([results] if isinstance(results, ClaimResult) else results)

    # ------------------------------------------------------------------ options
    def check(self) -> None:
        """Validate option combinations; raises HarnessError naming the option."""
        o = self.options
        if o.seeds < 1:
            raise HarnessError("--harness-seeds must be at least 1")
        if o.findings.exists() and not o.findings.is_dir():
            raise HarnessError(f"--findings-dir {o.findings} exists and is not a folder")
        if o.plan_given and not o.plan_path.is_file():
            raise HarnessError(f"--harness-plan {o.plan_path}: no such plan file")
        if o.claims_dir is not None and not o.claims_dir.is_dir():
            raise HarnessError(f"--claims-dir {o.claims_dir}: no such folder")
        if o.baseline is not None:
            if not Path(o.baseline).is_file():
                raise HarnessError(f"--findings-baseline {o.baseline}: no such findings file")
            load_json(Path(o.baseline))
        if not (o.plan_given or o.base or o.variant or o.seeds > 1 or o.device == "cpu"):
            return
        plan = self.plan
        if o.seeds > 1 and not any(n.method != "base" for n in plan.nodes):
            raise HarnessError(f"--harness-seeds {o.seeds}: plan {o.plan_path} trains no node, so it cannot be reseeded")
        if o.device == "cpu" and getattr(plan, "requires_cuda", False):
            raise HarnessError(f"--harness-device cpu conflicts with plan {o.plan_path}, which needs CUDA (4-bit QLoRA)")

    @property
    def plan(self) -> Any:
        """The plan, with ``--harness-variant`` and ``--harness-base`` applied."""
        if self._plan is None:
            from harness.train import load_plan

            plan = load_plan(self.options.plan_path).configured(self.options.env)
            if self.options.variant:
                plan = plan.variant(self.options.variant)
            self._plan = plan.with_base(self.options.base) if self.options.base else plan
        return self._plan

    def plan_or_none(self) -> Any:
        """The plan, or None when it cannot load (rows recorded by plain checks still get written)."""
        try:
            return self.plan
        except HarnessError:
            return None

    @property
    def base(self) -> str:
        return base_name(self.plan.base, self.plan.tiny)

    @property
    def label(self) -> str:
        """The findings folder's name: the plan, and the base when ``--harness-base`` swapped it."""
        plan = self.plan_or_none()
        name = plan.name if plan is not None else self.options.plan_path.stem
        if not self.options.base:
            return name
        return f"{name}@{re.sub(r'[^A-Za-z0-9._-]+', '_', base_name(self.options.base))}"

    # ------------------------------------------------------------------ claims
    def specs(self) -> list[ClaimSpec]:
        if self._specs is None:
            self._specs = load_specs(self.options.claims)
        return self._specs

    def cases(self) -> list[Case]:
        """Every spec's pairs, then its negative controls' pairs: the runner's parametrization."""
        out = []
        for s in self.specs():
            out += [Case(s, p) for p in s.pairs]
            out += [Case(s, p, c) for c in s.controls for p in s.pairs if c.covers(p.label)]
        return out

    def zoo_cases(self) -> list[ZooCase]:
        """Every zoo tokenizer every spec of the claims folder names (``zoo = [...]``)."""
        return [ZooCase(s, name) for s in self.specs() for name in s.zoo]

    def eos_cache(self) -> Path:
        """Where the zoo tokenizers' small models and their generations are cached."""
        return diff_cache_dir(self.options.fixtures_dir, self.options.root).parent / "eos"

    # ------------------------------------------------------------------ graphs and sources
    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def quiet(self) -> Any:
        """Training and generation output goes to the session's log file (see :func:`builds.quiet`)."""
        return quiet(self.log_path)

    def build(self, plan: Any, nodes: Sequence[str] | None = None) -> Any:
        """Build (or load) ``nodes`` of ``plan`` and their ancestors (default: every node) in one build, with a
        progress line on the terminal as each missing node starts and ends. Returns the Graph."""
        try:
            return self.builds.build(plan, nodes)
        finally:
            if self.ahead is not None:  # paused while a build trained in this process
                self.ahead.build_ended()

    def plan_cases(self, cases: Sequence[Case]) -> None:
        """The claim cases this session will run (after ``-k``/``-m``): the first :meth:`prepare` builds every
        node they need in one build of all their graphs, so that ready nodes train at once over the device slots,
        and has the build's workers compute the generations those cases will read as each node is built
        (:mod:`harness.findings.prefetch`; not with ``HARNESS_LEGACY_PREFETCH=1``)."""
        self._planned = list(cases)

    def _prebuild(self) -> None:
        cases, self._planned = self._planned, None
        if not cases:
            return
        ready = []
        for case in cases:
            try:
                ready.append(self.resolve(case))
            except HarnessError:  # raised again by the case's own resolve, so that case (not the first) errors
                continue
        afters = None
        if not self.options.env.legacy_prefetch:  # the claims' generations computed by the build's workers
            from harness.findings.prefetch import afters as prefetch_afters

            afters = prefetch_afters(self, ready)
        self.builds.build_all([(p, r.nodes) for r in ready if r.skip is None for p in r.plans], afters)

    def seed_plans(self) -> list[tuple[int, Any]]:
        """``[(training seed, plan)]``, one per ``--harness-seeds`` (the plan itself under its own seed)."""

        def make() -> list[tuple[int, Any]]:
            plan = self.plan
            return [(s, plan if s == plan.seed else plan.with_seed(s))
                    for s in training_seeds(plan, self.options.seeds)]

        return self.memo(("seed-plans",), make)

    def variant_plan(self, control: Control | None) -> Any:
        """The plan a negative control runs on: the plan with the control's recipe override applied (the
        plan's own ``[variants.NAME]`` of that name when it has one, else the spec's ``override``); the plan
        itself for ``None``. A control with neither is a :class:`~harness.errors.LoadError` naming both files."""
        if control is None:
            return self.plan

        def make() -> Any:
            table, where = control.table_for(self.plan)
            try:
                return self.plan.with_variant(control.variant, table, where)
            except HarnessError as exc:  # the spec's override on this plan (e.g. a node it lacks): name the plan
                if where is None:
                    raise
                raise type(exc)(f"{exc} (applied to {self.plan.path or repr(self.plan.name)})") from None

        return self.memo(("variant-plan", control.variant), make)

    def resolve(self, case: Case) -> Resolved:
        """Which plan, graphs and nodes ``case`` reads, or why it skips: worked out once per case and session.
        A pair whose nodes the plan lacks skips; a control the plan cannot apply raises (never a skip)."""

        def make() -> Resolved:
            spec, pair, control, plan = case.spec, case.pair, case.control, self.plan
            missing = spec.missing_nodes(pair, plan.names)
            if missing:  # before the control's override, which may name the nodes the plan lacks
                return Resolved(case, plan, (), (), f"{spec.id}: plan {plan.name!r} has no node "
                                                    f"{', '.join(missing)} (roles: {', '.join(spec.roles)})")
            vplan = self.variant_plan(control)
            missing = spec.missing_nodes(pair, vplan.names)
            if missing:
                return Resolved(case, vplan, (), (), f"{spec.id}: negative control {control.variant!r} leaves out "
                                                     f"node {', '.join(missing)} of plan {vplan.name!r} (its 'only')")
            plans = (vplan,) if control else tuple(p for _, p in self.seed_plans())
            return Resolved(case, vplan, plans, tuple(pair[r] for r in spec.roles if pair[r] in vplan.names))

        return self.memo(("case", case.id), make)

    def graphs(self, nodes: Sequence[str] | None = None) -> list[tuple[int, Any]]:
        """``[(training seed, Graph)]``, one per ``--harness-seeds`` (with ``nodes`` and their ancestors built)."""
        seed_plans = self.seed_plans()
        self.seeds = [s for s, _ in seed_plans]
        return [(s, self.build(p, nodes)) for s, p in seed_plans]

    def graph(self, control: Control | None = None, nodes: Sequence[str] | None = None) -> tuple[Any, Any]:
        """(plan, graph) of the plan itself or of a negative control's variant."""
        if control is None:
            return self.plan, self.graphs(nodes)[0][1]
        plan = self.variant_plan(control)
        return plan, self.build(plan, nodes)

    def prepare(self, case: Case) -> Resolved:
        """Build the nodes the case reads (and their ancestors) in every graph it reads; the first call builds
        those of every planned case (:meth:`plan_cases`). Returns the case resolved."""
        if self._planned is not None:
            self._start_diffs_ahead(self._planned)
            try:
                self._prebuild()
            finally:
                if self.ahead is not None:
                    self.ahead.build_ended()
        r = self.resolve(case)
        if case.control is None:
            self.seeds = [s for s, _ in self.seed_plans()]  # the training seeds the findings report
        for plan in r.plans:
            self.build(plan, r.nodes)
        return r

    def diff_source(self, plan: Any, graph: Any) -> DiffSource:
        """The weight diffs of ``plan``'s ``graph``, cached on disk under the fixtures (what the statistics read)."""
        return DiffSource(node_set(plan, graph), diff_cache_dir(self.options.fixtures_dir, self.options.root),
                          self.options.device)

    def _start_diffs_ahead(self, cases: Sequence[Case]) -> None:
        """Have a thread compute the weight diffs ``cases`` (and the report's plots) will read during the build
        (:mod:`harness.findings.diffahead`; not with ``HARNESS_LEGACY_PREFETCH=1``)."""
        if self.options.env.legacy_prefetch:
            return
        from harness.findings.diffahead import start

        try:
            self.ahead = start(self, cases, self.diff_source)
        except Exception as exc:  # noqa: BLE001 - an optimisation: the statistics compute the diffs themselves
            self.say(f"weight diffs ahead: none ({type(exc).__name__}: {exc}); the statistics compute them")
            return
        if self.ahead is not None:
            self.builds.watch = self.ahead.watch

    def diffs_ahead_done(self, stop: bool = False) -> None:
        """Wait for the diffs computed ahead (``stop``: after the one in progress); their seconds during the
        build go into the timing."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return
        self.builds.watch = None
        ahead.join(stop)
        if ahead.records:
            from harness.findings.diffahead import PHASE

            during = ahead.seconds_during_build()
            if during:  # the rest (after a build in this process: all) was waited for in the kind's phase
                self.timing.add(PHASE, during)
            self.say(f"{ahead.summary()} (log: {self.log_path})")

    def diff_sources(self, control: Control | None = None) -> list[tuple[int | None, DiffSource]]:
        self.diffs_ahead_done()  # the statistics read what it computed from the disk cache
        if control is not None:
            plan, graph = self.graph(control, [])
            return [(None, self.diff_source(plan, graph))]

        def make() -> list[tuple[int | None, DiffSource]]:
            graphs = self.graphs([])  # the nodes each case reads are built by prepare()
            multi = len(graphs) > 1
            return [(s if multi else None, self.diff_source(self.plan, g)) for s, g in graphs]

        return self.memo(("diffs",), make)

    def judge_endpoint(self) -> Any:
        """The LLM judge's endpoint: ``--judge-serve`` MODEL served on loopback (a plan node is built
        first; :meth:`close` stops the server), else the environment's (``OPENAI_*``)."""

        def make() -> Any:
            from harness.inference.serve import session_endpoint

            spec, graph = self.options.judge_serve, None
            if spec and spec in self.plan.names:
                _, graph = self.graph(None, [spec])
            log = self.options.findings / f"{self.options.run}-judge-serve.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            endpoint, self._judge_server = session_endpoint(
                spec, graph, device=self.options.device, log_path=log,
                cache_root=Path(self.options.fixtures_dir) if self.options.fixtures_dir else None,
                judge_model=self.options.env.judge_model, gguf_dir=self.options.env.gguf_folder)
            return endpoint

        return self.memo(("judge-endpoint",), make)

    def close(self) -> None:
        """Stop what the session started (the diffs ahead, after the one in progress; the judge server)."""
        self.diffs_ahead_done(stop=True)
        server, self._judge_server = getattr(self, "_judge_server", None), None
        if server is not None:
            server.stop()

    def known_deviation(self, spec: ClaimSpec, pair: Pair) -> str | None:
        from harness.device import resolve_device

        device = resolve_device(self.options.device).split(":")[0]
        return spec.known_deviation(self.plan.name, self.base, pair.label, device)

    # ------------------------------------------------------------------ end of session
    def meta(self) -> dict[str, Any]:
        o = self.options
        meta: dict[str, Any] = {"plan_path": str(o.plan_path), "device": o.device, "seeds": self.seeds,
                                "baseline": o.baseline, "claims_dir": str(o.claims)}
        endpoint = self._memo.get(("judge-endpoint",))
        if endpoint is not None:
            meta["judge"] = endpoint.label
        plan = self.plan_or_none()
        if plan is None:
            return {**meta, "plan": self.options.plan_path.stem}
        meta.update(plan=plan.name, variant=plan.variant_name, base=self.base, base_model=plan.base,
                    recipe={"lora": dataclasses.asdict(plan.lora), "sft": dataclasses.asdict(plan.sft),
                            "dpo": dataclasses.asdict(plan.dpo), "seed": plan.seed, "data_seed": plan.data_seed,
                            "limit": plan.limit})
        graph = self.builds.graph_of(plan)
        if graph is not None:
            base = plan.names[0]
            # the content key of the base (hashing a hub id and snapshot, a folder's files or the tiny recipe),
            # its folder (a hub snapshot folder is named by its revision) and what the node's meta says of it
            meta["base_identity"] = {"key": str(graph.key(base)), "path": str(graph.path(base)),
                                     **{k: v for k, v in graph.meta(base).items()
                                        if k in ("identity", "base", "sha256", "revision", "gguf")}}
        if "base_identity" in self.merged_meta:
            meta.setdefault("base_identity", self.merged_meta["base_identity"])
        if "workers" in self.merged_meta:  # pytest-xdist: which GPU each worker was pinned to
            meta["workers"] = self.merged_meta["workers"]
        meta["timing"] = self.timing.to_dict(self.builds.timings)
        return meta

    def plot(self, folder: Path, run: str) -> list[Path]:
        self.diffs_ahead_done()
        sources = self._memo.get(("diffs",))
        if not sources:
            return []
        try:
            specs = self.specs()
        except HarnessError:
            specs = []
        return plot_graph(sources[0][1], self.plan, folder, run, conflict_pairs(specs, sources[0][1]))

    def finish(self) -> Outcome | None:
        """Write the findings (when any row was recorded), compare with the baseline."""
        if not self.results:
            return None
        self.outcome = finish(self.results, findings_dir=self.options.findings, plan=self.label,
                              run=self.options.run, meta=self.meta(), baseline=self.options.baseline,
                              plot=self.plot, strict=self.options.strict, preflight=self.preflight())
        return self.outcome

    def build_failures(self) -> list[str]:
        """Each node (or graph) that failed to build in this session, one line each with its error and log:
        this process's, then those the pytest-xdist workers reported (:meth:`take_worker`)."""
        return [f.describe() for f in self.builds.failures()] + self.merged_failures

    def preflight(self) -> list[NodePreflight]:
        """The pre-flight of every trained node the claims read (this process's graphs, else the workers')."""
        return self.builds.preflight(self.options.seeds) or list(self.merged_preflight)

    # ------------------------------------------------------------------ what the plugin tells the session
    def deselected_claims(self) -> None:
        """``-k``/``-m`` deselected some claim case."""
        self.claims_deselected = True

    def keyword_matched(self, keyword: str, any_claim: bool) -> None:
        """After collection: when ``-k keyword`` deselected claim cases and left none, say which exist."""
        if not (keyword and self.claims_deselected and not any_claim):
            return
        try:
            specs = self.specs()
        except HarnessError as exc:
            self.no_match = f"-k {keyword!r} matched no claim case; the claims could not be loaded: {exc}"
            return
        ids = ", ".join(s.id for s in specs)
        example = self.cases()[0].id if specs else "-"
        self.no_match = (f"-k {keyword!r} matched no claim case. Claims in {self.options.claims}: {ids} "
                         f"(case ids look like {example!r})")

    def computed_diffs(self) -> bool:
        """Whether this session computed the graph's diffs (a worker tells the controller, which plots them)."""
        return bool(self._memo.get(("diffs",)))

    def workers_computed_diffs(self) -> bool:
        """Whether a pytest-xdist worker computed diffs (so the controller reads them from the disk cache)."""
        return bool(self.merged_meta.get("diffs"))

    def take_worker(self, rows: Iterable[ClaimResult], *, seeds: Iterable[int] = (), base_identity: Any = None,
                    diffs: bool = False, preflight: Iterable[NodePreflight] = (),
                    worker: dict[str, Any] | None = None, failures: Iterable[str] = ()) -> None:
        """Merge one pytest-xdist worker's rows and metadata (rows sorted by claim, pair, check and seed,
        as no worker order is meaningful; a node two workers read is listed once in the pre-flight, and a node
        two workers failed to build once in the build failures)."""
        for line in failures:
            if line not in self.merged_failures:
                self.merged_failures.append(line)
        if base_identity:
            self.merged_meta["base_identity"] = base_identity
        self.merged_meta["diffs"] = self.merged_meta.get("diffs", False) or diffs
        for p in preflight:
            if p not in self.merged_preflight:
                self.merged_preflight.append(p)
        if worker is not None:
            workers = self.merged_meta.setdefault("workers", {})
            workers[worker["id"]] = worker["gpu"]
            self.merged_meta["workers"] = dict(sorted(workers.items()))
        self.merged_preflight.sort(key=lambda p: (p.variant or "", p.seed or 0, p.node))
        self.seeds = sorted(set(self.seeds) | set(seeds))
        self.record(list(rows))
        self.results.sort(key=lambda r: (r.claim, r.pair, r.check, -1 if r.seed is None else r.seed))


def finish(results: Sequence[ClaimResult], *, findings_dir: Path, plan: str, run: str, meta: dict[str, Any],
           baseline: str | None, plot: Any = None, strict: bool = False,
           preflight: Sequence[NodePreflight] = ()) -> Outcome:
    """Write the findings files (and plots, and each trained node's pre-flight), compare with the baseline,
    aggregate each check across training seeds (its verdict may be inconclusive)."""
    out = Outcome(preflight=list(preflight), checks=aggregate(results), strict=strict)
    folder = Path(findings_dir) / plan
    if plot is not None:
        t0 = time.perf_counter()
        try:
            out.images = plot(folder, run)
        except Exception as exc:  # plots are a report extra: never hide the findings themselves
            out.errors.append(f"plots not written: {exc}")
        if isinstance(meta.get("timing"), dict):  # the report's own phase, after the rest of the timing was taken
            meta = {**meta, "timing": {**meta["timing"], "phases": {**meta["timing"]["phases"],
                                                                    "report plots": round(time.perf_counter() - t0, 3)}}}
    meta = {"plan": plan, **meta, "run": run, "versions": library_versions()}
    out.json_path, out.md_path = write(folder, run, results, meta, [str(p) for p in out.images], out.preflight)
    for c in out.checks:
        if not c.agree:
            out.disagreements.append(f"{c.key[0]} {c.key[2]} [{c.key[1]}]: verdicts {', '.join(c.verdicts)} "
                                     f"for values {', '.join(f'{v:.4g}' for v in c.values)}")
    if baseline:
        old_meta, old = load_json(Path(baseline))
        out.comparison = compare(results, old, old_meta=old_meta, new_meta=meta, strict=strict)
        out.version_changes = version_changes(old_meta.get("versions", {}), meta["versions"])
    return out
