"""Pre-flight before a node trains: its real records through its real pipeline, and the stop tokens.

Two checks, both on the tokenizer the node trains with:

- the label audit (:func:`harness.audit.audit`) on the node's training records, with the pipeline
  it trains through (its method's pre-flight pipeline, :mod:`harness.train.methods`), its ``max_length`` and the generation EOS ids;
- the stop tokens (:func:`stop_token_findings`, which decides the post-flight's too): the tokenizer has an
  EOS, generation stops on some id (the generation config's EOS ids, else the model config's), and the
  token that ends an assistant turn in the chat template and the tokenizer's EOS are both ones it stops on.
  A base without an EOS is refused here with ``tokenizer-eos-missing`` (the label audit cannot run on it);
  one whose configs name no generation EOS with ``end-of-turn-not-generation-eos`` (it stops on nothing
  when served, and so would every node saved from it).

An error stops the build with one line, unless the plan's ``[preflight] allow`` names its code
with a reason. The result goes into the node's ``meta.json`` under ``preflight``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.audit.codes import end_of_turn
from harness.errors import NodeError
from harness.train import methods
from harness.train.plan import SELFGEN


class PreflightError(NodeError):
    """A node's training setup would train a broken model; the message names the node and the finding."""


@dataclass
class PreflightResult:
    """What the pre-flight found for one node (``status``: clean, allowed, warning or error)."""

    node: str
    pipeline: str
    status: str
    generation_eos: list[int]
    tokenizer_eos: int | None
    end_of_turn: int | None
    findings: list[dict] = field(default_factory=list)
    allowed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generation_eos(model_dir: str | Path) -> list[int]:
    """The generation config's EOS ids (falling back to the model config's)."""
    from harness.audit.loading import generation_eos_ids

    ids = generation_eos_ids(Path(model_dir))
    if not ids:
        import json

        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        eos = cfg.get("eos_token_id")
        ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    return ids


#: which file a stop-token finding is about: the tokenizer's, or the one the generation EOS ids come from
TOKENIZER_SIDE, GENERATION_SIDE = "tokenizer", "generation"


@dataclass(frozen=True)
class StopFinding:
    """One disagreement among the stop tokens, decided by :func:`stop_token_findings` for the pre-flight
    and the post-flight alike. ``side`` says which file it is about (:data:`TOKENIZER_SIDE`: the tokenizer's
    config; :data:`GENERATION_SIDE`: the generation config's EOS ids); each caller names that file its way."""

    code: str
    severity: str
    side: str
    field: str
    message: str


def stop_token_findings(tok: Any, gen: Sequence[int]) -> tuple[int | None, list[StopFinding]]:
    """The template's end-of-turn id, and errors where tokenizer EOS / end-of-turn / generation EOS disagree
    (``gen``: the ids generation stops on, [] when neither the generation config nor the model config has one).

    The one place that decides the stop-token codes: the pre-flight runs it on the base's tokenizer before
    training, the post-flight on a node's saved tokenizer and generation config."""
    out: list[StopFinding] = []
    eot, eos, gen = end_of_turn(tok), tok.eos_token_id, list(gen)
    if eos is None:
        out.append(StopFinding("tokenizer-eos-missing", "error", TOKENIZER_SIDE, "eos_token",
                               "eos_token is null: nothing names the token that ends a sequence"))
    elif gen and eos not in gen:
        out.append(StopFinding("tokenizer-eos-not-generation-eos", "error", GENERATION_SIDE, "eos_token_id",
                               f"eos_token_id {show_ids(gen)} lacks the tokenizer's eos_token "
                               f"{token_names(tok, [eos])}"))
    if eot is None:
        out.append(StopFinding("template-no-end-of-turn", "error", TOKENIZER_SIDE, "chat_template",
                               "the chat template ends an assistant turn with no special token: nothing trains "
                               "the model to stop, and nothing stops a reply"))
    elif gen and eot not in gen:
        out.append(StopFinding("end-of-turn-not-generation-eos", "error", GENERATION_SIDE, "eos_token_id",
                               f"eos_token_id {show_ids(gen)} lacks the end-of-turn {token_names(tok, [eot])}"))
    elif not gen:
        out.append(StopFinding("end-of-turn-not-generation-eos", "error", GENERATION_SIDE, "eos_token_id",
                               "eos_token_id is null (and config.json has none): generation stops on nothing"))
    return eot, out


def stop_dicts(tok: Any, gen: Sequence[int]) -> tuple[int | None, list[dict]]:
    """:func:`stop_token_findings` as the pre-flight records them: the base's folder is the one place read,
    so a generation-side message says "the generation config's" rather than naming a file."""
    eot, found = stop_token_findings(tok, gen)
    where = {TOKENIZER_SIDE: "", GENERATION_SIDE: "the generation config's "}
    return eot, [{"code": f.code, "severity": f.severity, "field": f.field, "message": where[f.side] + f.message}
                 for f in found]


def show_ids(ids: Sequence[int] | None) -> str:
    """``2`` for one id, ``[1, 2]`` for several, ``null`` for none."""
    if ids is None:
        return "null"
    return str(ids[0]) if len(ids) == 1 else str(list(ids))


def token_names(tok: Any, ids: Sequence[int]) -> str:
    """``'</s>' (id 2), ...``: each id with its token."""
    return ", ".join(f"{tok.convert_ids_to_tokens(int(i))!r} (id {i})" for i in ids)


def run(node: str, method: str, tok: Any, model_dir: str | Path, records: Sequence[dict], max_length: int,
        allow: Mapping[str, str] | None = None, where: str = "") -> PreflightResult:
    """Pre-flight one node; raises :class:`PreflightError` on an error the plan does not allow."""
    from harness.audit import audit

    pipeline, fmt = methods.get(method).preflight
    gen = generation_eos(model_dir)
    eot, found = stop_dicts(tok, gen)
    # without an EOS the audit cannot run (it would stop on a LoadError); tokenizer-eos-missing says so
    report = audit(tok, data=list(records), fmt=fmt, pipeline=pipeline, max_length=max_length,
                   generation_eos=gen or None) if tok.eos_token_id is not None else None
    for f in report.findings if report is not None else ():
        found.append({"code": f.code, "severity": f.severity, "count": f.count, "side": f.side,
                      "examples": f.examples[:5], "message": f.message, "hint": f.hint})
    allow = dict(allow or {})
    errors = [f for f in found if f["severity"] == "error" and f["code"] not in allow]
    allowed = {f["code"]: allow[f["code"]] for f in found if f["code"] in allow}
    status = "error" if errors else "allowed" if allowed else "warning" if found else "clean"
    result = PreflightResult(node, pipeline, status, list(gen), tok.eos_token_id, eot, found, allowed)
    if errors:
        e = errors[0]
        n = f" in {e['count']} of {len(records)} examples (e.g. #{e['examples'][0]})" if e.get("count") else ""
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PreflightError(f"pre-flight {where}{node} [{pipeline}]: {e['code']}: {e['message']}{n}{more}; "
                             "fix the base or template, allow the code in the plan's [preflight] allow "
                             "with a reason, or pass --no-preflight", node)
    return result


def preflight_nodes(plan: Any, names: Sequence[str], tok_dir: Path) -> dict[str, dict]:
    """Pre-flight ``names`` (trained nodes of ``plan``) with the tokenizer in ``tok_dir``; raises on the first
    error. Nodes whose method, records and ``max_length`` agree share one audit (DPO on d0 after any parent)."""
    from harness import data
    from harness.train.common import load_tokenizer
    from harness.train.keys import node_records

    tok = load_tokenizer(tok_dir)
    where = f"{plan.path or plan.name}: "
    out: dict[str, dict] = {}
    done: dict[tuple, dict] = {}
    for name in names:
        node = plan.node(name)
        if node.dataset == SELFGEN:  # its records exist only once its parent has generated them
            out[name] = {"status": "at-build", "reason": "selfgen records are audited when they are made"}
            continue
        records, max_length = node_records(plan, name), plan.recipe(name).max_length
        key = (node.method, data.records_hash(records), max_length)
        if key not in done:
            done[key] = run(name, node.method, tok, tok_dir, records, max_length, plan.preflight_allow,
                            where).to_dict()
        out[name] = {**done[key], "node": name}
        if node.method == "sft" and getattr(plan.recipe(name), "mask_stop_labels", False):
            out[name] = deliberate_control(out[name])
    return out


#: the finding a node trained with ``mask_stop_labels`` carries: a negative control, built broken on purpose
MASKED_STOP_LABELS = "stop-labels-masked"


def deliberate_control(result: dict) -> dict:
    """``result`` with the ``mask_stop_labels`` control recorded (a warning, never a refusal): the audit reads
    trl's own collator, so it cannot see the mask the recipe adds; this says the node will not learn to stop."""
    finding = {"code": MASKED_STOP_LABELS, "severity": "warning",
               "message": "deliberate negative control ([sft] mask_stop_labels = true): the collator masks the "
                          "label of every stop token, as study 004's pad == EOS collator did, so this node is "
                          "trained not to learn its stop token"}
    status = result.get("status")
    return {**result, "findings": [*result.get("findings", []), finding],
            "status": "warning" if status == "clean" else status}
