"""Claim specs: TOML files in ``fixtures/claims/`` loaded into frozen, validated dataclasses.

One file holds one claim::

    id = "C1"
    statement = "DPO changes weights far less than SFT"
    seed_table = "Table 4"
    plans = ["tiny", "seed"]            # plan names (file stems) the claim runs on
    negative_control = "c1_dpo_at_sft_lr"  # a plan variant (or a named setup) under which it must fail
    pairs = [{ dpo = "dpo_d0", sft = "sft_d0" }]   # the comparable node pairs, role -> node

    [[check]]                            # one or more; the claim holds when every check holds
    statistic = "update_l2_ratio"        # a name in harness.findings.statistics.STATISTICS
    comparator = "<"                     # <, <=, >, >=
    threshold = 0.5
    seed_value = 0.04                    # what the seed reported (optional; or a table pair label -> value)
    tolerance = 0.5                      # relative move allowed against a baseline run
    reason = "why this threshold"        # required: thresholds carry their reason
    params = { }                         # extra keyword arguments of the statistic

    [known_deviations]                   # optional: plan name = why the claim does not hold there
    tiny = "reason"                      # (rows still say FAIL; the suite marks the check xfail),
                                         # or { reason = "...", pairs = ["sft_d0"] } for some pairs only

Every error is a :class:`~harness.errors.LoadError` naming the file and the field.
"""

from __future__ import annotations

import math
import operator
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from harness.errors import LoadError

PathLike = Union[str, Path]

COMPARATORS: Mapping[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

CLAIM_KEYS = {"id", "statement", "seed_table", "plans", "negative_control", "pairs", "check", "zoo",
              "known_deviations"}
CHECK_KEYS = {"statistic", "comparator", "threshold", "seed_value", "tolerance", "reason", "params", "label"}


@dataclass(frozen=True)
class Pair:
    """Named roles mapped to node names, e.g. ``dpo=dpo_d0, sft=sft_d0``."""

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
        """Short id used in test ids and report rows: the node names joined by ``/``."""
        return "/".join(self.nodes)


@dataclass(frozen=True)
class Check:
    """One comparison: ``statistic(pair) <comparator> threshold``."""

    statistic: str
    comparator: str
    threshold: float
    reason: str
    seed_value: float | None = None
    tolerance: float = 0.25
    params: tuple[tuple[str, Any], ...] = ()
    label: str = ""
    seed_values: tuple[tuple[str, float], ...] = ()

    def seed_for(self, pair_label: str) -> float | None:
        """The seed's value for this pair (a per-pair table entry), else the single ``seed_value``."""
        return dict(self.seed_values).get(pair_label, self.seed_value)

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
class ClaimSpec:
    """A research claim as data; see the module docstring for the file format."""

    id: str
    statement: str
    seed_table: str
    plans: tuple[str, ...]
    negative_control: str
    pairs: tuple[Pair, ...]
    checks: tuple[Check, ...]
    source: Path
    zoo: tuple[str, ...] = ()
    known_deviations: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def known_deviation(self, plan_name: str, pair_label: str | None = None) -> str | None:
        """Why the claim is known not to hold on that plan (for that pair), if it is: the rows are
        still reported FAIL, and the suite marks the check xfail (not strict)."""
        for plan, reason, pairs in self.known_deviations:
            if plan == plan_name and (not pairs or pair_label is None or pair_label in pairs):
                return reason
        return None

    def runs_on(self, plan_name: str) -> bool:
        return not self.plans or plan_name in self.plans


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


def _check(path: Path, raw: Any, i: int, statistics: Any) -> Check:
    where = f"check[{i}]"
    if not isinstance(raw, Mapping):
        raise _err(path, where, "must be a table ([[check]])")
    unknown = set(raw) - CHECK_KEYS
    if unknown:
        raise _err(path, f"{where}.{sorted(unknown)[0]}", f"unknown key; known: {', '.join(sorted(CHECK_KEYS))}")
    stat = _str(path, raw, "statistic", f"{where}.statistic")
    if statistics is not None and stat not in statistics:
        raise _err(path, f"{where}.statistic", f"unknown statistic {stat!r}; known: {', '.join(statistics.names())}")
    comp = _str(path, raw, "comparator", f"{where}.comparator")
    if comp not in COMPARATORS:
        raise _err(path, f"{where}.comparator", f"{comp!r} is not one of {', '.join(COMPARATORS)}")
    if "threshold" not in raw:
        raise _err(path, f"{where}.threshold", "is missing")
    threshold = _num(path, raw["threshold"], f"{where}.threshold")
    reason = _str(path, raw, "reason", f"{where}.reason")
    seed_value, seed_values = raw.get("seed_value"), ()
    if isinstance(seed_value, Mapping):
        seed_values = tuple((str(k), _num(path, v, f"{where}.seed_value.{k}")) for k, v in seed_value.items())
        seed_value = None
    elif seed_value is not None:
        seed_value = _num(path, seed_value, f"{where}.seed_value")
    tolerance = _num(path, raw.get("tolerance", 0.25), f"{where}.tolerance")
    if tolerance < 0:
        raise _err(path, f"{where}.tolerance", f"must be >= 0, got {tolerance}")
    params = raw.get("params", {})
    if not isinstance(params, Mapping):
        raise _err(path, f"{where}.params", "must be a table")
    label = raw.get("label", "")
    if not isinstance(label, str):
        raise _err(path, f"{where}.label", "must be a string")
    return Check(stat, comp, threshold, reason, seed_value, tolerance,
                 tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())), label, seed_values)


def _pairs(path: Path, raw: Any) -> tuple[Pair, ...]:
    if not isinstance(raw, list) or not raw:
        raise _err(path, "pairs", "must be a non-empty array of tables (role = node)")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or not item:
            raise _err(path, f"pairs[{i}]", "must be a non-empty table of role = node name")
        for role, node in item.items():
            if not isinstance(node, str) or not node:
                raise _err(path, f"pairs[{i}].{role}", f"must be a node name, got {node!r}")
        out.append(Pair(tuple(item.items())))
    return tuple(out)


def load_spec(path: PathLike, statistics: Any = None) -> ClaimSpec:
    """Load one claim TOML; ``statistics`` (a Registry) validates the statistic names."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LoadError(f"{path}: claim spec file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise LoadError(f"{path}: not valid TOML: {exc}") from None
    unknown = set(data) - CLAIM_KEYS
    if unknown:
        raise _err(path, sorted(unknown)[0], f"unknown key; known: {', '.join(sorted(CLAIM_KEYS))}")
    plans = data.get("plans", [])
    if not isinstance(plans, list) or not all(isinstance(p, str) for p in plans):
        raise _err(path, "plans", "must be an array of plan names")
    zoo = data.get("zoo", [])
    if not isinstance(zoo, list) or not all(isinstance(z, str) for z in zoo):
        raise _err(path, "zoo", "must be an array of tokenizer folder names")
    known = data.get("known_deviations", {})
    if not isinstance(known, Mapping):
        raise _err(path, "known_deviations", "must be a table of plan name = reason (or {reason, pairs})")
    deviations = []
    for plan, value in known.items():
        where = f"known_deviations.{plan}"
        reason, pairs = value, []
        if isinstance(value, Mapping):
            reason, pairs = value.get("reason"), value.get("pairs", [])
            if not isinstance(pairs, list) or not all(isinstance(p, str) for p in pairs):
                raise _err(path, f"{where}.pairs", "must be an array of pair labels")
        if not isinstance(reason, str) or not reason.strip():
            raise _err(path, where, "needs a non-empty reason")
        deviations.append((plan, reason, tuple(pairs)))
    checks_raw = data.get("check")
    if not isinstance(checks_raw, list) or not checks_raw:
        raise _err(path, "check", "at least one [[check]] table is required")
    return ClaimSpec(
        id=_str(path, data, "id", "id"),
        statement=_str(path, data, "statement", "statement"),
        seed_table=_str(path, data, "seed_table", "seed_table"),
        plans=tuple(plans),
        negative_control=_str(path, data, "negative_control", "negative_control"),
        pairs=_pairs(path, data.get("pairs")),
        checks=tuple(_check(path, c, i, statistics) for i, c in enumerate(checks_raw)),
        source=path,
        zoo=tuple(zoo),
        known_deviations=tuple(deviations),
    )


def load_specs(folder: PathLike, statistics: Any = None, ids: Sequence[str] | None = None) -> list[ClaimSpec]:
    """Load every ``*.toml`` in ``folder`` (sorted by id); duplicate ids are an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder}: claim spec folder not found")
    specs: dict[str, ClaimSpec] = {}
    for path in sorted(folder.glob("*.toml")):
        spec = load_spec(path, statistics)
        if spec.id in specs:
            raise _err(path, "id", f"duplicate claim id {spec.id!r} (also in {specs[spec.id].source})")
        specs[spec.id] = spec
    if ids is not None:
        missing = [i for i in ids if i not in specs]
        if missing:
            raise LoadError(f"{folder}: no claim spec with id {', '.join(missing)}; known: {', '.join(sorted(specs))}")
        return [specs[i] for i in ids]
    return [specs[k] for k in sorted(specs)]
