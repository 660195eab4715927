"""Claim specs: TOML files (``fixtures/claims/`` or ``--claims-dir``) loaded into frozen, validated dataclasses.

One file holds one claim; a new claim is one file::

    id = "C1"
    kind = "weights"                     # what its statistics read: weights, generations, similarity, judge
    statement = "DPO changes weights far less than SFT"
    reference_table = "Table 4"          # where the study's numbers come from
    roles = ["dpo", "sft"]               # node roles every pair names (the plan's graph must have those nodes)
    data_roles = []                      # roles that name a dataset, not a node (e.g. C7's "own")
    pairs = [{ dpo = "dpo_d0", sft = "sft_d0" }]   # the comparable cases, role -> node

    negative_control = "text"            # a control run elsewhere (described), or tables the runner runs:
    [[negative_control]]
    variant = "c1_dpo_at_sft_lr"         # the control's name (test ids, row labels "dpo_d0/sft_d0 [NAME]")
    expect = "fail"                      # the claim must not hold there
    pairs = ["dpo_d0/sft_d0"]            # pair labels (default: every pair)
    about = "DPO at SFT's learning rate and epochs: the gap closes"
    override = { dpo = { learning_rate = 1e-4, epochs = 3 }, only = ["dpo_d0", "sft_d0"] }
    # the recipe override, applied to whatever plan the claims run on; the keys of a plan's variant table:
    # lora, sft, dpo (recipe tables), nodes."NAME" (one node's recipe keys), only, limit, quantize_4bit.
    # A plan's own [variants.NAME] of the same name replaces it on that plan (a plan-specific adjustment);
    # a control with neither is an error when the claims run, never a skip.

    [[check]]                            # one or more; the claim holds when every check holds
    statistic = "l2_ratio"               # registered for the spec's kind (harness.findings.kinds)
    comparator = "<"                     # <, <=, >, >=
    threshold = 0.5
    reason = "why this threshold"        # required: thresholds carry their reason
    reference_value = 0.04               # the study's value (or a table: pair label -> value)
    tolerance = 0.5                      # relative move allowed against a baseline run
    floor = 0.01                         # absolute move below which a baseline never flags (values near 0)
    params = { num = ["parent(dpo)", "dpo"], den = ["parent(sft)", "sft"] }   # roles, parent(role) or "base"
    informational = false                # true: reported with verdict "info", never fails the claim

    [[known_deviation]]                  # measured on one plan AND base: rows still say FAIL, the test xfails
    plan = "tiny"
    base = "tiny-907965db"               # the base: hub id, folder or GGUF file name, or tiny-<[tiny] hash>
    pairs = ["sft_d0"]                   # optional: only these pairs
    device = "cuda"                      # optional: only when the claims run on this device (cpu, cuda)
    reason = "what was measured, and why"

"Seed" in this project means the training seed only; the study's numbers are reference values.
Every error is a :class:`~harness.errors.LoadError` naming the file and the field.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from harness.errors import LoadError
from harness.tomlfile import load_toml

PathLike = Union[str, Path]

COMPARATORS: Mapping[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

CLAIM_KEYS = {"id", "kind", "statement", "reference_table", "roles", "data_roles", "negative_control", "pairs",
              "check", "zoo", "known_deviation"}
CHECK_KEYS = {"statistic", "comparator", "threshold", "reference_value", "tolerance", "floor", "reason", "params",
              "label", "informational"}
CONTROL_KEYS = {"variant", "expect", "pairs", "about", "override"}
#: the variant-table keys a control's override takes ([tiny] changes only the tiny base: a plan's own variant)
OVERRIDE_KEYS = frozenset({"lora", "sft", "dpo", "nodes", "only", "limit", "quantize_4bit"})
DEVIATION_KEYS = {"plan", "base", "pairs", "reason", "device"}
DEVICES = ("cpu", "cuda")
RENAMED = {"seed_value": "reference_value", "seed_table": "reference_table", "plans": None,
           "known_deviations": "known_deviation"}
_PARENT = re.compile(r"^parent\((\w+)\)$")
BASE_REF = "base"  # a node reference naming the graph's base node


@dataclass(frozen=True)
class Pair:
    """Named roles mapped to node (or dataset) names, e.g. ``dpo=dpo_d0, sft=sft_d0``."""

    roles: tuple[tuple[str, str], ...]

    def __getitem__(self, role: str) -> str:
        for name, node in self.roles:
            if name == role:
                return node
        raise KeyError(role)

    def get(self, role: str, default: str | None = None) -> str | None:
        try:
            return self[role]
        except KeyError:
            return default

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(node for _, node in self.roles)

    @property
    def label(self) -> str:
        """Short id used in test ids and report rows: the values joined by ``/``."""
        return "/".join(self.nodes)


@dataclass(frozen=True)
class Check:
    """One comparison: ``statistic(pair) <comparator> threshold``."""

    statistic: str
    comparator: str
    threshold: float
    reason: str
    reference_value: float | None = None
    tolerance: float = 0.25
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""
    reference_values: tuple[tuple[str, float], ...] = ()
    floor: float = 0.0
    informational: bool = False  # a finding reported beside the claim (verdict "info"), never its verdict

    def reference_for(self, pair_label: str) -> float | None:
        """The study's value for this pair (a per-pair table entry), else the single ``reference_value``."""
        return dict(self.reference_values).get(pair_label, self.reference_value)

    @property
    def name(self) -> str:
        return self.label or self.statistic

    def holds(self, measured: float) -> bool:
        """True when the measured value satisfies the comparison (NaN never does)."""
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return False
        return bool(COMPARATORS[self.comparator](measured, self.threshold))

    def margin(self, measured: float) -> float:
        """Signed distance to the threshold, positive when the check holds."""
        if self.comparator in ("<", "<="):
            return self.threshold - measured
        return measured - self.threshold

    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Control:
    """A negative control the runner runs: a recipe override under which the claim must fail.

    ``override`` is a variant table (the keys of a plan's ``[variants.NAME]``) applied to whatever plan the
    claims run on; a plan's own ``[variants.NAME]`` of the same ``variant`` name replaces it there
    (:meth:`table_for`). ``source`` is the spec file, ``index`` the control's place in it (for errors)."""

    variant: str
    expect: str = "fail"
    pairs: tuple[str, ...] = ()
    about: str = ""
    override: Mapping[str, Any] | None = field(default=None, hash=False)
    source: Path | None = field(default=None, compare=False)
    index: int = field(default=0, compare=False)

    @property
    def where(self) -> str:
        """The override's file and field, as errors name it."""
        return f"{self.source}: negative_control[{self.index}].override"

    def table_for(self, plan: Any) -> tuple[Mapping[str, Any], str | None]:
        """``(variant table, where)`` this control applies to ``plan``: the plan's own ``[variants.NAME]``
        (``where`` None: the plan names it), else the spec's override. Raises :class:`LoadError` naming the
        spec and the plan when neither exists."""
        own = getattr(plan, "variants", {}) or {}
        if self.variant in own:
            return own[self.variant], None
        if self.override is not None:
            return self.override, self.where
        plan_file = getattr(plan, "path", None) or f"plan {getattr(plan, 'name', '?')!r}"
        raise LoadError(f"{self.source}: negative_control[{self.index}] ({self.variant!r}) has no override, and "
                        f"{plan_file} has no [variants.{self.variant}]: give the control an override = {{ ... }} "
                        "(the keys of a plan variant) in the spec, or the plan a variant of that name")

    def covers(self, pair_label: str) -> bool:
        return not self.pairs or pair_label in self.pairs


@dataclass(frozen=True)
class Deviation:
    """A measured known deviation: on this plan and base the claim does not hold (for these pairs)."""

    plan: str
    base: str
    reason: str
    pairs: tuple[str, ...] = ()
    device: str = ""  # empty: on every device

    def applies(self, plan: str, base: str, pair_label: str | None, device: str | None = None) -> bool:
        return (self.plan == plan and self.base == base
                and (not self.pairs or pair_label is None or pair_label in self.pairs)
                and (not self.device or device is None or self.device == device))


@dataclass(frozen=True)
class ClaimSpec:
    """A research claim as data; see the module docstring for the file format."""

    id: str
    kind: str
    statement: str
    reference_table: str
    roles: tuple[str, ...]
    negative_control: str
    pairs: tuple[Pair, ...]
    checks: tuple[Check, ...]
    source: Path
    data_roles: tuple[str, ...] = ()
    controls: tuple[Control, ...] = ()
    zoo: tuple[str, ...] = ()
    known_deviations: tuple[Deviation, ...] = ()

    def known_deviation(self, plan: str, base: str, pair_label: str | None = None,
                        device: str | None = None) -> str | None:
        """Why the claim is known not to hold on that plan and base (for that pair, on that device type),
        if it is."""
        for d in self.known_deviations:
            if d.applies(plan, base, pair_label, device):
                return d.reason
        return None

    def missing_nodes(self, pair: Pair, nodes: Sequence[str]) -> list[str]:
        """The pair's node-role values that are not nodes of a graph with ``nodes``."""
        return [pair[r] for r in self.roles if pair[r] not in nodes]


def _err(path: Path, field: str, msg: str) -> LoadError:
    return LoadError(f"{path}: field {field!r}: {msg}")


def _str(path: Path, data: Mapping[str, Any], key: str, field: str) -> str:
    if key not in data:
        raise _err(path, field, "is missing")
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise _err(path, field, f"must be a non-empty string, got {value!r}")
    return value


def _num(path: Path, value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(path, field, f"must be a finite number, got {value!r}")
    return float(value)


def _names(path: Path, data: Mapping[str, Any], key: str, field: str, what: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _err(path, field, f"must be an array of {what}")
    return tuple(value)


def _unknown(path: Path, raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in sorted(set(raw) - allowed):
        field = f"{where}.{key}" if where else key
        if where == "" and key in RENAMED:
            new = RENAMED[key]
            hint = (f"renamed to {new!r} (\"seed\" means the training seed only)" if new
                    else "removed: a claim runs on every plan whose graph has its roles")
            raise _err(path, field, hint)
        if where.startswith("check[") and key == "seed_value":
            raise _err(path, field, "renamed to 'reference_value' (\"seed\" means the training seed only)")
        raise _err(path, field, f"unknown key; known: {', '.join(sorted(allowed))}")


def _node_ref(path: Path, ref: Any, roles: Sequence[str], field: str) -> None:
    if not isinstance(ref, str):
        raise _err(path, field, f"must be a node reference (a role, parent(role) or {BASE_REF!r}), got {ref!r}")
    m = _PARENT.match(ref)
    role = m.group(1) if m else ref
    if role not in roles and not (ref == BASE_REF and not m):
        raise _err(path, field, f"{ref!r} names no role; roles: {', '.join(roles)} (or parent(role), {BASE_REF!r})")


def _check(path: Path, raw: Any, i: int, spec: Mapping[str, Any], labels: Sequence[str]) -> Check:
    where = f"check[{i}]"
    if not isinstance(raw, Mapping):
        raise _err(path, where, "must be a table ([[check]])")
    _unknown(path, raw, CHECK_KEYS, where)
    stat = _str(path, raw, "statistic", f"{where}.statistic")
    from harness.findings.kinds import check_statistic

    problem = check_statistic(spec["kind"], stat)
    if problem:
        raise _err(path, f"{where}.statistic", problem)
    comp = _str(path, raw, "comparator", f"{where}.comparator")
    if comp not in COMPARATORS:
        raise _err(path, f"{where}.comparator", f"{comp!r} is not one of {', '.join(COMPARATORS)}")
    if "threshold" not in raw:
        raise _err(path, f"{where}.threshold", "is missing")
    threshold = _num(path, raw["threshold"], f"{where}.threshold")
    reason = _str(path, raw, "reason", f"{where}.reason")
    ref, refs = raw.get("reference_value"), ()
    if isinstance(ref, Mapping):
        for k in ref:
            if k not in labels:
                raise _err(path, f"{where}.reference_value.{k}", f"is no pair label; labels: {', '.join(labels)}")
        refs = tuple((str(k), _num(path, v, f"{where}.reference_value.{k}")) for k, v in ref.items())
        ref = None
    elif ref is not None:
        ref = _num(path, ref, f"{where}.reference_value")
    tolerance = _num(path, raw.get("tolerance", 0.25), f"{where}.tolerance")
    floor = _num(path, raw.get("floor", 0.0), f"{where}.floor")
    for name, v in (("tolerance", tolerance), ("floor", floor)):
        if v < 0:
            raise _err(path, f"{where}.{name}", f"must be >= 0, got {v}")
    params = raw.get("params", {})
    if not isinstance(params, Mapping):
        raise _err(path, f"{where}.params", "must be a table")
    for k, v in params.items():
        if isinstance(v, list):
            for j, ref_ in enumerate(v):
                _node_ref(path, ref_, spec["roles"], f"{where}.params.{k}[{j}]")
    label = raw.get("label", "")
    if not isinstance(label, str):
        raise _err(path, f"{where}.label", "must be a string")
    informational = raw.get("informational", False)
    if not isinstance(informational, bool):
        raise _err(path, f"{where}.informational", f"must be true or false, got {informational!r}")
    return Check(stat, comp, threshold, reason, ref, tolerance,
                 tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())), label, refs,
                 floor, informational)


def _pairs(path: Path, raw: Any, roles: Sequence[str], data_roles: Sequence[str]) -> tuple[Pair, ...]:
    if not isinstance(raw, list) or not raw:
        raise _err(path, "pairs", "must be a non-empty array of tables (role = node)")
    want = set(roles) | set(data_roles)
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not item:
            raise _err(path, f"pairs[{i}]", "must be a non-empty table of role = node name")
        for role, node in item.items():
            if role not in want:
                raise _err(path, f"pairs[{i}].{role}", f"is not a declared role; roles: {', '.join(sorted(want))}")
            if not isinstance(node, str) or not node:
                raise _err(path, f"pairs[{i}].{role}", f"must be a node name, got {node!r}")
        missing = sorted(want - set(item))
        if missing:
            raise _err(path, f"pairs[{i}].{missing[0]}", "is missing (every pair names every role)")
        out.append(Pair(tuple(item.items())))
    labels = [p.label for p in out]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise _err(path, "pairs", f"pair {dup!r} is listed twice")
    return tuple(out)


def _label_list(path: Path, raw: Mapping[str, Any], field: str, labels: Sequence[str]) -> tuple[str, ...]:
    pairs = raw.get("pairs", [])
    if not isinstance(pairs, list) or not all(isinstance(p, str) for p in pairs):
        raise _err(path, f"{field}.pairs", "must be an array of pair labels")
    for p in pairs:
        if p not in labels:
            raise _err(path, f"{field}.pairs", f"{p!r} is no pair label; labels: {', '.join(labels)}")
    return tuple(pairs)


def _controls(path: Path, raw: Any, labels: Sequence[str]) -> tuple[str, tuple[Control, ...]]:
    if isinstance(raw, str) and raw.strip():
        return raw, ()
    if not isinstance(raw, list) or not raw:
        raise _err(path, "negative_control", "must be a description or an array of tables ([[negative_control]])")
    out = []
    for i, t in enumerate(raw):
        where = f"negative_control[{i}]"
        if not isinstance(t, Mapping):
            raise _err(path, where, "must be a table")
        _unknown(path, t, CONTROL_KEYS, where)
        variant = _str(path, t, "variant", f"{where}.variant")
        expect = t.get("expect", "fail")
        if expect != "fail":
            raise _err(path, f"{where}.expect", f"must be \"fail\" (a negative control), got {expect!r}")
        about = t.get("about", "")
        if not isinstance(about, str):
            raise _err(path, f"{where}.about", "must be a string")
        override = t.get("override")
        if override is not None:
            from harness.train.plan import check_variant_table
            from harness.train.recipe import freeze

            check_variant_table(override, f"{path}: {where}.override", OVERRIDE_KEYS)
            override = freeze(override)
        out.append(Control(variant, expect, _label_list(path, t, where, labels), about, override, path, i))
    text = "; ".join(f"{c.variant}: {c.about}" if c.about else c.variant for c in out)
    return text, tuple(out)


def _deviations(path: Path, raw: Any, labels: Sequence[str]) -> tuple[Deviation, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _err(path, "known_deviation", "must be an array of tables ([[known_deviation]])")
    out = []
    for i, t in enumerate(raw):
        where = f"known_deviation[{i}]"
        if not isinstance(t, Mapping):
            raise _err(path, where, "must be a table")
        _unknown(path, t, DEVIATION_KEYS, where)
        device = _str(path, t, "device", f"{where}.device") if "device" in t else ""
        if device and device not in DEVICES:
            raise _err(path, f"{where}.device", f"must be one of {', '.join(DEVICES)}, got {device!r}")
        out.append(Deviation(_str(path, t, "plan", f"{where}.plan"), _str(path, t, "base", f"{where}.base"),
                             _str(path, t, "reason", f"{where}.reason"), _label_list(path, t, where, labels),
                             device))
    return tuple(out)


def load_spec(path: PathLike, statistics: Any = None) -> ClaimSpec:
    """Load one claim TOML; the statistic names are checked against the spec's kind.

    ``statistics`` is accepted for older callers and ignored: the kind's provider is imported here."""
    path = Path(path)
    data = load_toml(path, "claim spec")
    _unknown(path, data, CLAIM_KEYS, "")
    kind = _str(path, data, "kind", "kind")
    from harness.findings.kinds import KINDS

    if kind not in KINDS:
        raise _err(path, "kind", f"unknown kind {kind!r}; known: {', '.join(KINDS.names())}")
    roles = _names(path, data, "roles", "roles", "node role names")
    if not roles:
        raise _err(path, "roles", "is missing: name the node roles every pair gives")
    data_roles = _names(path, data, "data_roles", "data_roles", "dataset role names")
    pairs = _pairs(path, data.get("pairs"), roles, data_roles)
    labels = [p.label for p in pairs]
    text, controls = _controls(path, data.get("negative_control"), labels)
    checks_raw = data.get("check")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise _err(path, "check", "at least one [[check]] table is required")
    ctx = {"kind": kind, "roles": roles}
    checks = tuple(_check(path, c, i, ctx, labels) for i, c in enumerate(checks_raw))
    names = [c.name for c in checks]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise _err(path, "check", f"two checks are labelled {dup!r}; give each a distinct label")
    zoo = _names(path, data, "zoo", "zoo", "tokenizer folder names")
    if zoo and kind != "generations":
        raise _err(path, "zoo", f"only a claim of kind 'generations' trains a model per zoo tokenizer, not {kind!r}")
    return ClaimSpec(
        id=_str(path, data, "id", "id"), kind=kind,
        statement=_str(path, data, "statement", "statement"),
        reference_table=_str(path, data, "reference_table", "reference_table"),
        roles=roles, negative_control=text, pairs=pairs, checks=checks, source=path, data_roles=data_roles,
        controls=controls, zoo=zoo,
        known_deviations=_deviations(path, data.get("known_deviation"), labels),
    )


def load_specs(folder: PathLike, statistics: Any = None, ids: Sequence[str] | None = None) -> list[ClaimSpec]:
    """Load every ``*.toml`` in ``folder`` (sorted by id); duplicate ids are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder}: claim spec folder not found")
    specs: dict[str, ClaimSpec] = {}
    for path in sorted(folder.glob("*.toml")):
        spec = load_spec(path)
        if spec.id in specs:
            raise _err(path, "id", f"duplicate claim id {spec.id!r} (also in {specs[spec.id].source})")
        specs[spec.id] = spec
    _same_overrides(specs.values())
    if ids is not None:
        missing = [i for i in ids if i not in specs]
        if missing:
            raise LoadError(f"{folder}: no claim spec with id {', '.join(missing)}; known: {', '.join(sorted(specs))}")
        return [specs[i] for i in ids]
    return [specs[k] for k in sorted(specs)]


def _same_overrides(specs: Sequence[ClaimSpec] | Any) -> None:
    """Controls of one name are one variant (one graph, one cache): two specs may share a name only with the
    same override."""
    seen: dict[str, Control] = {}
    for spec in specs:
        for c in spec.controls:
            first = seen.setdefault(c.variant, c)
            if first.override != c.override:
                raise LoadError(f"{c.where}: control {c.variant!r} is also in {first.source} with another override; "
                                "a control's name names one recipe: rename one of them")
