"""Plans: one TOML file describes a base model, a LoRA/SFT/DPO recipe, seeds and a node graph.

A plan loads into frozen, validated dataclasses; every error names the plan file and the
field. The recipe sections and the type-checking of their tables are in :mod:`harness.train.recipe`; a plan
that says ``extends = "other.toml"`` states only what differs (the merge rules: :mod:`harness.train.planfile`).
``[variants.NAME]`` tables override recipe keys globally (``sft``/``dpo``/``lora``
tables) or per node (``nodes."NAME" = {...}``) and may restrict the nodes to build
(``only = [...]``, ancestors are kept); :meth:`Plan.variant` applies one, :meth:`Plan.with_variant` applies a
table given inline (a claim spec's negative control carries its own), and :func:`check_variant_table` checks such
a table's keys and types before any plan is at hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from harness.errors import HarnessError
from harness.train import methods
from harness.train.recipe import SCHEDULERS, BaseSource, FrozenDict, LoraSpec, PlanError, Recipe, TinySpec
from harness.train.recipe import apply_table as _apply, check_keys as _check_keys, freeze as _freeze, typed as _typed

__all__ = ["BaseSource", "FrozenDict", "LoraSpec", "Node", "Plan", "PlanError", "Recipe", "SCHEDULERS", "TinySpec",
           "VARIANT_KEYS", "check_variant_table", "load_plan", "plan_from_dict"]

DATASET_NAMES = ("d0", "d1", "d2")
#: A node whose data its parent makes by study 003's loop (``selfgen = {...}`` on the node).
SELFGEN = "selfgen"
SELFGEN_METHODS = ("reuse", "pick", "drop_low", "keep_low")
#: The keys a variant table takes (``[variants.NAME]`` of a plan, or a claim control's ``override``).
VARIANT_KEYS = frozenset({"lora", "sft", "dpo", "tiny", "nodes", "only", "limit", "quantize_4bit"})
SELFGEN_KEYS = {"source": str, "method": str, "n": int, "temperature": float, "top_p": float,
                "max_new_tokens": int, "low_fraction": float}


@dataclass(frozen=True)
class Node:
    """One model of the graph: ``method`` trains on ``dataset`` starting from ``parent`` (merged)."""

    name: str
    method: str
    dataset: str | None = None  # d0, d1, d2, or the resolved path of the node's own JSONL file
    parent: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=lambda: _freeze({}), compare=False, hash=False)
    # own data only: {"path", "format", "chosen", "rejected"} (see harness.userdata)
    source: Mapping[str, Any] = field(default_factory=lambda: _freeze({}), compare=False, hash=False)
    #: For ``dataset = "selfgen"``: source, method, n, ... (see ``harness.inference.selfgen.SelfgenSpec``).
    selfgen: Mapping[str, Any] = field(default_factory=lambda: _freeze({}), compare=False, hash=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (self.name, self.method, self.dataset, self.parent, dict(self.overrides), dict(self.source),
                dict(self.selfgen)) == (other.name, other.method, other.dataset, other.parent, dict(other.overrides),
                                        dict(other.source), dict(other.selfgen))

    def __hash__(self) -> int:
        return hash((self.name, self.method, self.dataset, self.parent, tuple(sorted(self.overrides.items())),
                     tuple(sorted(self.source.items())), tuple(sorted(self.selfgen.items()))))


@dataclass(frozen=True)
class Plan:
    """A validated plan. ``nodes`` are in build order (parents first)."""

    name: str
    path: Path | None
    base: str
    quantize_4bit: bool
    requires_cuda: bool
    seed: int
    data_seed: int
    limit: int
    lora: LoraSpec
    sft: Recipe
    dpo: Recipe
    tiny: TinySpec
    nodes: tuple[Node, ...]
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _freeze({}), compare=False)
    variant_name: str | None = None
    source: BaseSource = field(default_factory=BaseSource)
    # finding code -> why the plan accepts it (pre-flight errors listed here do not stop the build)
    preflight_allow: Mapping[str, str] = field(default_factory=lambda: _freeze({}))
    #: where d0/d1/d2 and the system prompt are read (``None``: the packaged fixtures/data); see :meth:`with_data`
    data_dir: Path | None = None
    gguf_dir: Path | None = None  # where ``$HARNESS_GGUF_DIR`` in base.model / base.offline points
    #: the training loop without per-step work that changes no number (:func:`harness.train.common.lean_steps`);
    #: False (``HARNESS_LEGACY_STEPS=1``) is the Trainer's own loop. Not in any key: the weights are the same
    lean_steps: bool = field(default=True, compare=False)

    # ------------------------------------------------------------------ queries
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise HarnessError(f"{self._where()}: no node {name!r}; known: {', '.join(self.names)}")

    def recipe(self, name: str) -> Recipe:
        """The effective recipe of a trained node: the plan's section plus the node's overrides."""
        node = self.node(name)
        if node.method == "base":
            raise HarnessError(f"{self._where()}: node {name!r} is the base; it has no recipe")
        rec = getattr(self, methods.get(node.method).section)
        return _apply(rec, node.overrides, f"{self._where()}: nodes.{name!r}") if node.overrides else rec

    def ancestors(self, name: str) -> list[str]:
        """``name`` and its parents up to the base, the base first."""
        chain, cur = [], name
        while cur is not None:
            chain.append(cur)
            cur = self.node(cur).parent
        return chain[::-1]

    def _where(self) -> str:
        where = str(self.path) if self.path else f"plan {self.name!r}"
        return f"{where} [variant {self.variant_name}]" if self.variant_name else where

    # ------------------------------------------------------------------ derived plans
    def with_seed(self, seed: int) -> "Plan":
        """The same plan under another training seed (the base is shared)."""
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise PlanError(f"{self._where()}: seed must be an integer, got {seed!r}")
        return replace(self, seed=seed)

    def with_base(self, model: str) -> "Plan":
        """The same plan (graph, recipe, seeds) on another base: ``"tiny"``, a hub id, a model folder or a
        GGUF file; relative paths are taken from the working directory."""
        if not isinstance(model, str) or not model.strip():
            raise PlanError(f"{self._where()}: base model must be \"tiny\", a hub id or a path, got {model!r}")
        p = Path(model).expanduser()
        if model != "tiny" and (p.exists() or model.startswith((".", "/", "~"))):
            model = str(p.resolve())
        return replace(self, base=model)

    def with_data(self, folder: str | Path | None) -> "Plan":
        """The same plan reading the study's data (persona, system prompt) from ``folder``; ``None`` keeps
        the plan's. The edges pass ``HARNESS_DATA_DIR`` here; node keys hash the records, not the folder."""
        return self if folder is None else replace(self, data_dir=Path(folder).expanduser())

    def configured(self, config: Any) -> "Plan":
        """The plan under a run configuration (:class:`harness.config.RunConfig`, read by the edges): its data
        folder (``HARNESS_DATA_DIR``), the folder ``$HARNESS_GGUF_DIR`` in its base points to, and the training
        loop (``HARNESS_LEGACY_STEPS``)."""
        plan = self.with_data(config.data_dir)
        if getattr(config, "legacy_steps", False):
            plan = replace(plan, lean_steps=False)
        return plan if config.gguf_dir is None else replace(plan, gguf_dir=Path(config.gguf_dir).expanduser())

    def variant(self, name: str) -> "Plan":
        """The plan with ``[variants.NAME]`` applied; unchanged nodes keep their cache key."""
        if name not in self.variants:
            known = ", ".join(sorted(self.variants)) or "(none)"
            raise PlanError(f"{self._where()}: no variant {name!r}; known: {known}")
        return self.with_variant(name, self.variants[name])

    def with_variant(self, name: str, table: Mapping[str, Any], where: str | None = None) -> "Plan":
        """The plan with a variant ``table`` (the keys of a ``[variants.NAME]`` table) applied under ``name``;
        unchanged nodes keep their cache key. ``where`` names the table in errors (default: this plan's
        ``variants.NAME``); a claim spec's negative control passes its file and field."""
        if not isinstance(table, Mapping):
            raise PlanError(f"{where or f'{self._where()}: variants.{name}'}: must be a table")
        return _apply_variant(self, name, table, where)



# ---------------------------------------------------------------------- the TOML schema

def _parse_nodes(raw: Any, where: str, base_dir: Path | None = None) -> tuple[Node, ...]:
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{where}: field 'nodes' must be a non-empty array of tables ([[nodes]])")
    nodes: list[Node] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        w = f"{where}: nodes[{i}]"
        if not isinstance(t, dict):
            raise PlanError(f"{w}: must be a table")
        _check_keys(t, {"name", "method", "dataset", "parent", "overrides", "selfgen"}, w)
        name = t.get("name")
        if not isinstance(name, str) or not name:
            raise PlanError(f"{w}.name: missing or not a string")
        w = f"{where}: nodes[{i}] ({name})"
        if name in seen:
            raise PlanError(f"{w}.name: duplicate node name {name!r}")
        method = t.get("method")
        if method not in methods.names():
            raise PlanError(f"{w}.method: must be one of {', '.join(methods.names())}, got {method!r}")
        dataset, parent = t.get("dataset"), t.get("parent")
        source: dict = {}
        if method == "base":
            if dataset is not None or parent is not None:
                raise PlanError(f"{w}: the base node takes no dataset or parent")
        else:
            from harness.userdata import plan_source

            source = plan_source(dataset, methods.get(method).kind, f"{w}.dataset", base_dir, PlanError)
            if source:
                dataset = source["path"]
            elif dataset not in DATASET_NAMES + (SELFGEN,):
                raise PlanError(f"{w}.dataset: must be one of {', '.join(DATASET_NAMES + (SELFGEN,))}, a .jsonl file "
                                f"or a table {{ path, format, chosen, rejected }}, got {dataset!r}")
            if not isinstance(parent, str):
                raise PlanError(f"{w}.parent: missing; a trained node names the node it starts from")
            if parent not in seen:
                raise PlanError(f"{w}.parent: {parent!r} is not a node listed before this one")
        overrides = t.get("overrides", {})
        if not isinstance(overrides, dict):
            raise PlanError(f"{w}.overrides: must be a table")
        node = Node(name, method, dataset, parent, _freeze(overrides),
                    _freeze(source) if method != "base" and source else _freeze({}), _parse_selfgen(t, dataset, w))
        nodes.append(node)
        seen.add(name)
    bases = [n for n in nodes if n.method == "base"]
    if len(bases) != 1 or nodes[0].method != "base":
        raise PlanError(f"{where}: nodes: exactly one node of method 'base' must come first")
    return tuple(nodes)


def _parse_selfgen(t: Mapping[str, Any], dataset: Any, w: str) -> Mapping[str, Any]:
    """A selfgen node's table, type-checked; ``{}`` for other nodes (which must not have one)."""
    raw = t.get("selfgen")
    if dataset != SELFGEN:
        if raw is not None:
            raise PlanError(f"{w}.selfgen: only a node with dataset = {SELFGEN!r} takes a selfgen table")
        return _freeze({})
    if not isinstance(raw, dict):
        raise PlanError(f"{w}.selfgen: missing; a selfgen node needs a table such as "
                        "{ source = \"d1\", method = \"pick\", n = 4 }")
    _check_keys(raw, set(SELFGEN_KEYS), f"{w}.selfgen")
    out = {k: _typed(v, SELFGEN_KEYS[k], f"{w}.selfgen.{k}") for k, v in raw.items()}
    out.setdefault("source", "d1")
    out.setdefault("method", "pick")
    out.setdefault("n", 4)
    if out["source"] not in DATASET_NAMES:
        raise PlanError(f"{w}.selfgen.source: must be one of {', '.join(DATASET_NAMES)}, got {out['source']!r}")
    if out["method"] not in SELFGEN_METHODS:
        raise PlanError(f"{w}.selfgen.method: must be one of {', '.join(SELFGEN_METHODS)}, got {out['method']!r}")
    if out["n"] < 1:
        raise PlanError(f"{w}.selfgen.n: must be at least 1, got {out['n']}")
    return _freeze(out)


def load_plan(path: str | Path) -> Plan:
    """Load and validate a plan TOML file (with its ``extends`` chain applied)."""
    from harness.tomlfile import load_toml

    p = Path(path)
    return plan_from_dict(load_toml(p, "plan file", PlanError), p)


def plan_from_dict(raw: Mapping[str, Any], path: Path | None = None, name: str | None = None) -> Plan:
    """Validate a parsed plan table; ``path`` (or ``name``) is what errors name. A table that says
    ``extends`` is laid over the file it names, found from ``path`` (:mod:`harness.train.planfile`)."""
    where = str(path) if path else f"plan {name or raw.get('name')!r}"
    if "extends" in raw:
        from harness.train.planfile import resolve_extends

        if path is None:
            raise PlanError(f"{where}: extends: {raw['extends']!r} needs the plan's path to be found")
        raw = resolve_extends(raw, path)
    _check_keys(raw, {"name", "base", "seed", "data", "tiny", "lora", "sft", "dpo", "nodes", "variants", "preflight"},
                where)
    pname = raw.get("name") or name or (path.stem if path else None)
    if not isinstance(pname, str) or not pname:
        raise PlanError(f"{where}: field 'name' must be a non-empty string")
    base = raw.get("base")
    if not isinstance(base, dict):
        raise PlanError(f"{where}: missing table [base] (model = \"tiny\" | hub id | path)")
    _check_keys(base, {"model", "quantize_4bit", "requires_cuda", "offline", "sha256", "chat_template",
                       "stop_tokens"}, f"{where}: base")
    model = base.get("model")
    if not isinstance(model, str) or not model:
        raise PlanError(f"{where}: base.model must be \"tiny\", a hub id or a path")
    model = _plan_path(model, path) if model != "tiny" else model
    source = _parse_source(base, model, path, where)
    q4 = _typed(base.get("quantize_4bit", True), bool, f"{where}: base.quantize_4bit")
    rc = _typed(base.get("requires_cuda", False), bool, f"{where}: base.requires_cuda")
    seed = raw.get("seed", {})
    if not isinstance(seed, dict):
        raise PlanError(f"{where}: field 'seed' must be a table ([seed] training = 0, data = 0)")
    _check_keys(seed, {"training", "data"}, f"{where}: seed")
    tseed = _typed(seed.get("training", 0), int, f"{where}: seed.training")
    dseed = _typed(seed.get("data", 0), int, f"{where}: seed.data")
    data = raw.get("data", {})
    _check_keys(data, {"limit"}, f"{where}: data")
    limit = _typed(data.get("limit", 0), int, f"{where}: data.limit")
    if limit < 0:
        raise PlanError(f"{where}: data.limit: must be 0 (all) or positive, got {limit}")
    sections = {}
    for key, obj in (("lora", LoraSpec()), ("sft", Recipe(learning_rate=1e-4)),
                     ("dpo", Recipe(learning_rate=1e-5)), ("tiny", TinySpec())):
        table = raw.get(key, {})
        if not isinstance(table, dict):
            raise PlanError(f"{where}: field {key!r} must be a table")
        sections[key] = _apply(obj, table, f"{where}: {key}")
    nodes = _parse_nodes(raw.get("nodes"), where, path.parent if path is not None else None)
    variants = raw.get("variants", {})
    if not isinstance(variants, dict):
        raise PlanError(f"{where}: field 'variants' must be a table of tables")
    allow = _parse_preflight(raw.get("preflight", {}), where)
    plan = Plan(pname, path, model, q4, rc, tseed, dseed, limit, sections["lora"], sections["sft"],
                sections["dpo"], sections["tiny"], nodes, _freeze({k: _freeze(v) for k, v in variants.items()}),
                source=source, preflight_allow=allow)
    for vname, vtable in variants.items():  # validate every variant now, so errors surface at load time
        if not isinstance(vtable, dict):
            raise PlanError(f"{where}: variants.{vname}: must be a table")
        _apply_variant(plan, vname, vtable)
    return plan


def _plan_path(value: str, path: Path | None) -> str:
    """A path relative to the plan file (``./x``, ``../x``) made absolute; hub ids and ``$VAR/x`` kept."""
    if path is not None and value.startswith("."):
        return str((path.parent / value).resolve())
    return value


def _parse_source(base: Mapping[str, Any], model: str, path: Path | None, where: str) -> BaseSource:
    kw: dict[str, Any] = {}
    for key in ("offline", "sha256", "chat_template"):
        if key in base:
            value = _typed(base[key], str, f"{where}: base.{key}")
            kw[key] = _plan_path(value, path) if key != "sha256" else value.lower()
    if "sha256" in kw and (len(kw["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in kw["sha256"])):
        raise PlanError(f"{where}: base.sha256: must be 64 hex digits, got {base['sha256']!r}")
    if "offline" in kw:
        if not kw["offline"].endswith(".gguf"):
            raise PlanError(f"{where}: base.offline: must name a .gguf file, got {kw['offline']!r}")
        kw["offline_for"] = model
    stops = base.get("stop_tokens", [])
    if not isinstance(stops, list) or not all(isinstance(t, str) and t for t in stops):
        raise PlanError(f"{where}: base.stop_tokens: must be a list of token strings, got {stops!r}")
    if model == "tiny" and (kw or stops):
        raise PlanError(f"{where}: base: offline, sha256, chat_template and stop_tokens need a base other than tiny")
    return BaseSource(stop_tokens=tuple(stops), **kw)


def _parse_preflight(table: Any, where: str) -> Mapping[str, str]:
    """``[preflight] allow = { code = "reason" }``: audit errors the plan accepts, each with its reason."""
    if not isinstance(table, dict):
        raise PlanError(f"{where}: field 'preflight' must be a table")
    _check_keys(table, {"allow"}, f"{where}: preflight")
    allow = table.get("allow", {})
    if not isinstance(allow, dict):
        raise PlanError(f"{where}: preflight.allow: must be a table of finding code = \"reason\"")
    for code, reason in allow.items():
        if not isinstance(reason, str) or not reason.strip():
            raise PlanError(f"{where}: preflight.allow.{code}: needs a reason (a non-empty string)")
    return _freeze(dict(allow))


def check_variant_table(table: Any, where: str, keys: frozenset[str] = VARIANT_KEYS) -> None:
    """Check a variant table without a plan: its keys (out of ``keys``), the recipe keys and types of its
    ``lora``/``sft``/``dpo``/``tiny`` tables and of each ``nodes."NAME"`` table, and the types of ``only``,
    ``limit`` and ``quantize_4bit``. Which nodes exist is checked when a plan applies it. Raises
    :class:`PlanError` starting with ``where``."""
    if not isinstance(table, Mapping):
        raise PlanError(f"{where}: must be a table")
    _check_keys(table, set(keys), where)
    if "quantize_4bit" in table:
        _typed(table["quantize_4bit"], bool, f"{where}.quantize_4bit")
    if "limit" in table:
        _typed(table["limit"], int, f"{where}.limit")
    defaults = {"lora": LoraSpec(), "sft": Recipe(), "dpo": Recipe(), "tiny": TinySpec()}
    for key, obj in defaults.items():
        if key in table:
            if not isinstance(table[key], Mapping):
                raise PlanError(f"{where}.{key}: must be a table")
            _apply(obj, table[key], f"{where}.{key}")
    per_node = table.get("nodes", {})
    if not isinstance(per_node, Mapping):
        raise PlanError(f"{where}.nodes: must be a table of node names")
    for nname, over in per_node.items():
        if not isinstance(over, Mapping):
            raise PlanError(f"{where}.nodes.{nname!r}: must be a table of recipe keys of a trained node")
        _apply(Recipe(), over, f"{where}.nodes.{nname!r}")
    only = table.get("only")
    if only is not None and (not isinstance(only, list) or not all(isinstance(o, str) for o in only)):
        raise PlanError(f"{where}.only: must be a list of node names")


def _apply_variant(plan: Plan, vname: str, table: Mapping[str, Any], where: str | None = None) -> Plan:
    where = where or f"{plan._where()}: variants.{vname}"
    _check_keys(table, set(VARIANT_KEYS), where)
    kw: dict[str, Any] = {"variant_name": vname}
    if "quantize_4bit" in table:  # QLoRA vs LoRA: part of every trained node's key
        kw["quantize_4bit"] = _typed(table["quantize_4bit"], bool, f"{where}.quantize_4bit")
    for key in ("lora", "sft", "dpo", "tiny"):
        if key in table:
            if not isinstance(table[key], Mapping):
                raise PlanError(f"{where}.{key}: must be a table")
            kw[key] = _apply(getattr(plan, key), table[key], f"{where}.{key}")
    if "limit" in table:
        kw["limit"] = _typed(table["limit"], int, f"{where}.limit")
    per_node = table.get("nodes", {})
    if not isinstance(per_node, Mapping):
        raise PlanError(f"{where}.nodes: must be a table of node names")
    names = {n.name for n in plan.nodes}
    for nname in per_node:
        if nname not in names:
            raise PlanError(f"{where}.nodes: unknown node {nname!r}; known: {', '.join(plan.names)}")
    nodes = []
    for n in plan.nodes:
        if n.name in per_node:
            over = per_node[n.name]
            if not isinstance(over, Mapping) or n.method == "base":
                raise PlanError(f"{where}.nodes.{n.name!r}: must be a table of recipe keys of a trained node")
            merged = {**n.overrides, **over}
            rec = getattr(plan, methods.get(n.method).section)
            _apply(rec, merged, f"{where}.nodes.{n.name!r}")
            n = replace(n, overrides=_freeze(merged))
        nodes.append(n)
    new = replace(plan, nodes=tuple(nodes), **kw)
    only = table.get("only")
    if only is not None:
        if not isinstance(only, list) or not all(isinstance(o, str) for o in only):
            raise PlanError(f"{where}.only: must be a list of node names")
        keep: set[str] = set()
        for o in only:
            if o not in names:
                raise PlanError(f"{where}.only: unknown node {o!r}; known: {', '.join(plan.names)}")
            keep.update(new.ancestors(o))
        new = replace(new, nodes=tuple(n for n in new.nodes if n.name in keep))
    return new
