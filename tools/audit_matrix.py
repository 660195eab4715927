#!/usr/bin/env python
"""Version matrix of the label/EOS audit: the tokenizer zoo and its label snapshots across transformers × trl.

Run from the project root (``tox -e matrix`` runs it):

    python tools/audit_matrix.py                         # last 3 transformers minors x last 2 trl releases
    python tools/audit_matrix.py --transformers 5.24.0,5.23.0 --trl 1.16.0 --families qwen3,llama3-instruct

Each combination gets its own venv under ``--out`` (default ``.audit-matrix/``): the CPU torch first, then the
project with ``-c`` a copy of constraints.txt whose transformers and trl pins are replaced. A combination pip
cannot resolve is reported as not installable with pip's reason. In each venv the ``worker`` subcommand audits
every entry of fixtures/tokenizers.toml and compares its labels with the entry's stored snapshot
(fixtures/audit-snapshots/), or, for an entry without one, with the labels the tested versions (constraints.txt)
gave in this run. The per-family table is written between the markers in docs/audit.md and the results (no
token ids) to docs/audit-matrix.json.

The functions above ``main`` are pure (tests/audit/test_audit_matrix.py); the rest runs pip and the worker.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BEGIN = "<!-- audit-matrix:begin"
END = "<!-- audit-matrix:end -->"
PROGRESS = "@@matrix "  # the worker's progress lines on stdout start with this
CPU_TORCH = "torch==2.13.0"


class MatrixError(Exception):
    """Bad input to the matrix (a file, a version list, the markers); the command exits 2 with it."""


# ---------------------------------------------------------------- versions and constraints (pure)

def canonical(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(===|==|>=|<=|~=|!=|<|>)\s*([^\s;#]+)")


def pins_of(text: str) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a constraints file."""
    out = {}
    for line in text.splitlines():
        m = _REQ.match(line)
        if m and m.group(3) == "==":
            out[canonical(m.group(1))] = m.group(4)
    return out


def rewrite_constraints(text: str, pins: dict[str, str], source: str = "constraints.txt") -> str:
    """``text`` (a constraints file) with each package of ``pins`` held to ``==`` its version instead.

    The package's line is replaced where it is (any operator, any spelling of the name); a package the file
    does not name is appended. A first comment line says what was replaced.
    """
    want = {canonical(k): (k, v) for k, v in pins.items()}
    done: set[str] = set()
    lines = []
    for line in text.splitlines():
        m = _REQ.match(line)
        if m and canonical(m.group(1)) in want:
            key = canonical(m.group(1))
            if key in done:  # a second line for the same package would contradict the new pin
                continue
            done.add(key)
            lines.append(f"{m.group(1)}=={want[key][1]}")
        else:
            lines.append(line)
    lines += [f"{name}=={version}" for key, (name, version) in want.items() if key not in done]
    head = f"# {source} with " + ", ".join(f"{n}=={v}" for n, v in pins.items()) + " (tools/audit_matrix.py)"
    return "\n".join([head] + lines) + "\n"


def parse_pip_index(output: str) -> list[str]:
    """The versions of ``pip index versions NAME`` (its ``Available versions:`` line), newest first."""
    for line in output.splitlines():
        if line.strip().startswith("Available versions:"):
            return [v.strip() for v in line.split(":", 1)[1].split(",") if v.strip()]
    raise MatrixError(f"pip index gave no 'Available versions:' line:\n{output.strip()[-400:]}")


def pick_versions(available: Iterable[str], spec: str, count: int, per_minor: bool) -> list[str]:
    """The newest ``count`` final releases in ``spec`` (a specifier such as ``>=5.0,<6``), newest first.

    ``per_minor``: one release per minor version (its newest patch), i.e. the last ``count`` minors.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    allowed = SpecifierSet(spec)
    versions = []
    for v in available:
        try:
            parsed = Version(v)
        except InvalidVersion:
            continue
        if not parsed.is_prerelease and not parsed.is_devrelease and parsed in allowed:
            versions.append(parsed)
    chosen: list = []
    seen_minor: set = set()
    for v in sorted(versions, reverse=True):
        if per_minor:
            if v.release[:2] in seen_minor:
                continue
            seen_minor.add(v.release[:2])
        chosen.append(v)
        if len(chosen) == count:
            break
    return [str(v) for v in chosen]


def pip_reason(stderr: str) -> str:
    """The part of a failed ``pip install``'s output that says why (the conflict, else its ERROR lines)."""
    lines = [line.rstrip() for line in stderr.splitlines()]
    out: list[str] = []
    for i, line in enumerate(lines):
        if "The conflict is caused by:" in line:
            out.append(line.strip())
            for nxt in lines[i + 1:]:
                if not nxt.strip():
                    break
                out.append(nxt.strip())
            break
    errors = [line.strip() for line in lines if line.strip().startswith("ERROR:")]
    if not out:
        out = errors or [line.strip() for line in lines if line.strip()][-5:]
    elif errors:
        out = errors[:1] + out
    text = " ".join(out)
    return text if len(text) <= 700 else text[:697] + "..."


# ---------------------------------------------------------------- comparing labels (pure)

def _flags(seq: dict) -> list[bool]:
    flags = [False] * len(seq["ids"])
    for a, b in seq["trained"]:
        for i in range(a, min(b, len(flags))):
            flags[i] = True
    return flags


def _window(ids: list[int], flags: list[bool], at: int, decode: Optional[Callable[[int], str]]) -> str:
    parts = []
    for i in range(max(0, at - 2), min(len(ids), at + 3)):
        piece = (decode(ids[i]) if decode else str(ids[i])).replace("\n", "\\n")
        parts.append(f"{'*' if flags[i] else ''}{piece}({ids[i]})")
    return " ".join(parts) if parts else "(nothing)"


def _order(example: str) -> tuple:
    head = example.split("/")[0]
    return (int(head) if head.isdigit() else 0, example)


def compare_runs(before: dict, after: dict, decode: Optional[Callable[[int], str]] = None) -> dict[str, Any]:
    """How the labels of ``after`` differ from ``before`` (both: a snapshot's ``runs``, {run: {example: seq}}).

    Counts sequences whose ids changed, tokens newly trained (before the old trained span = prompt side,
    inside it, after it = past the old stop) and newly masked (the last trained token, i.e. the stop, or
    others), and shows the first differing position as tokens (``*`` = trained; ``decode``: id -> text).
    """
    res: dict[str, Any] = {"sequences": 0, "changed": 0, "ids_changed": 0, "absent": 0, "added_sequences": 0,
                           "trained": {"before": 0, "inside": 0, "after": 0},
                           "masked": {"last": 0, "other": 0}, "masked_last_sequences": 0,
                           "trained_tokens_before": 0, "trained_tokens_after": 0,
                           "missing_runs": sorted(k for k in before if k not in after),
                           "new_runs": sorted(k for k in after if k not in before), "first": None}
    for run in sorted(set(before) & set(after)):
        old_run, new_run = before[run], after[run]
        for example in sorted(set(old_run) | set(new_run), key=_order):
            res["sequences"] += 1
            a, b = old_run.get(example), new_run.get(example)
            if a is None or b is None:
                res["changed"] += 1
                res["absent" if b is None else "added_sequences"] += 1
                if res["first"] is None:
                    res["first"] = {"run": run, "example": example, "position": 0,
                                    "before": "(absent)" if a is None else "(present)",
                                    "after": "(absent)" if b is None else "(present)"}
                continue
            fa, fb = _flags(a), _flags(b)
            res["trained_tokens_before"] += sum(fa)
            res["trained_tokens_after"] += sum(fb)
            if a["ids"] == b["ids"] and fa == fb:
                continue
            res["changed"] += 1
            n = max(len(a["ids"]), len(b["ids"]))
            at = next((i for i in range(n) if i >= len(a["ids"]) or i >= len(b["ids"])
                       or a["ids"][i] != b["ids"][i] or fa[i] != fb[i]), n)
            if res["first"] is None:
                res["first"] = {"run": run, "example": example, "position": at,
                                "before": _window(a["ids"], fa, at, decode),
                                "after": _window(b["ids"], fb, at, decode)}
            if a["ids"] != b["ids"]:
                res["ids_changed"] += 1
                continue
            span = [i for i, f in enumerate(fa) if f]
            first, last = (span[0], span[-1]) if span else (len(fa), -1)
            for i, (x, y) in enumerate(zip(fa, fb)):
                if y and not x:
                    res["trained"]["before" if i < first else "after" if i > last else "inside"] += 1
                elif x and not y:
                    res["masked"]["last" if i == last else "other"] += 1
            if span and fa[last] and not fb[last]:
                res["masked_last_sequences"] += 1
    return res


def same_labels(diff: dict) -> bool:
    """No sequence changed and every run of the reference was audited again."""
    return diff["changed"] == 0 and not diff["missing_runs"]


def describe(diff: dict) -> str:
    """What changed in a :func:`compare_runs` result, in words (``same labels`` when nothing did)."""
    if same_labels(diff):
        return "same labels"
    parts = []
    if diff["changed"]:
        parts.append(f"labels changed in {diff['changed']} of {diff['sequences']} sequences")
    t, m = diff["trained"], diff["masked"]
    if t["before"]:
        parts.append(f"the mask now trains {t['before']} tokens before the reply (prompt side, "
                     "e.g. the generation prompt)")
    if t["inside"]:
        parts.append(f"{t['inside']} reply tokens newly trained")
    if t["after"]:
        parts.append(f"{t['after']} tokens after the old trained span newly trained (past the stop)")
    if diff["masked_last_sequences"]:
        parts.append(f"the last trained token (the stop) is now masked in {diff['masked_last_sequences']} sequences")
    if m["other"]:
        parts.append(f"{m['other']} other previously trained tokens now masked")
    if diff["ids_changed"]:
        parts.append(f"token ids differ in {diff['ids_changed']} sequences (tokenization or template output "
                     f"changed; trained tokens {diff['trained_tokens_before']} -> {diff['trained_tokens_after']})")
    if diff["absent"]:
        parts.append(f"{diff['absent']} sequences no longer produced")
    if diff["added_sequences"]:
        parts.append(f"{diff['added_sequences']} sequences not in the reference")
    if diff["missing_runs"]:
        parts.append("runs not audited: " + ", ".join(diff["missing_runs"]))
    f = diff["first"]
    if f:
        parts.append(f"first at example {f['example']} token {f['position']}: `{f['before']}` → `{f['after']}`")
    return "; ".join(parts)


def short(diff: dict) -> str:
    """A table cell's few words for a :func:`compare_runs` result."""
    if same_labels(diff):
        return "same labels"
    bits = []
    t = diff["trained"]
    if t["before"]:
        bits.append(f"+{t['before']} prompt-side")
    if t["inside"]:
        bits.append(f"+{t['inside']} reply")
    if t["after"]:
        bits.append(f"+{t['after']} past stop")
    if diff["masked_last_sequences"]:
        bits.append("stop masked")
    if diff["masked"]["other"]:
        bits.append(f"−{diff['masked']['other']} masked")
    if diff["ids_changed"]:
        bits.append(f"ids differ in {diff['ids_changed']}")
    if diff["absent"] or diff["added_sequences"] or diff["missing_runs"]:
        bits.append("sequences differ")
    return f"**changed** {diff['changed']}/{diff['sequences']}: " + ", ".join(bits)


# ---------------------------------------------------------------- the table (pure)

def combo_label(combo: dict) -> str:
    return f"transformers {combo['transformers']} + trl {combo['trl']}"


def cell(rec: Optional[dict]) -> tuple[str, Optional[str]]:
    """(table cell, detail sentence or None) for one family × combo record of the worker."""
    if rec is None:
        return "not run", None
    status = rec["status"]
    if status == "error":
        return "audit error", f"audit error: {rec['error']}"
    if status == "skipped":
        return "not run", rec["error"]
    codes = "clean" if not rec["codes"] else ", ".join(rec["codes"])
    expect = "clean" if not rec["expect"] else ", ".join(rec["expect"])
    codes_note = None if rec["codes"] == rec["expect"] else f"codes {codes} (expected {expect})"
    if rec.get("diff") is None and rec.get("reference") == "tested run":
        text, detail = "the reference", None
    elif rec.get("diff") is None:
        text = "no reference labels"
        detail = "no stored snapshot and no labels from the tested versions to compare with"
    else:
        text = short(rec["diff"])
        detail = None if same_labels(rec["diff"]) else describe(rec["diff"])
    if codes_note:
        text += "; codes differ"
        detail = "; ".join(x for x in (detail, codes_note) if x)
    return text, detail


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(results: dict) -> str:
    """The markdown between the markers: one row per family, one column per installed combo, then the details."""
    combos = results["combos"]
    ran = [c for c in combos if c["status"] == "ok"]
    tested = results["tested"]
    lines = [f"Generated by `tox -e matrix` (tools/audit_matrix.py), last run {results['generated']} (a run of "
             "some families keeps the others' records from earlier runs); "
             f"raw results in `docs/audit-matrix.json`. Labels are compared with each family's stored snapshot "
             f"(`fixtures/audit-snapshots/`, made with the tested versions: transformers {tested['transformers']} + "
             f"trl {tested['trl']}), or, where a family has none, with what the tested versions gave in the same "
             "run (reference `tested run`). The finding codes equal each entry's `expect` unless a cell says "
             "`codes differ`. torch is the CPU 2.13.0 everywhere; every other package is held to constraints.txt "
             "(the installed versions of each combination are in the JSON).", ""]
    if not ran:
        lines.append("No combination could be installed.")
    else:
        head = ["family", "reference"] + [_md(combo_label(c)) + (" (tested)" if c.get("tested") else "")
                                          for c in ran]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        details = []
        for fam in results["families"]:
            ref = next((c["families"][fam].get("reference") for c in ran if fam in c["families"]
                        and c["families"][fam].get("reference")), "—")
            row = [_md(fam), _md(ref)]
            for c in ran:
                text, detail = cell(c["families"].get(fam))
                row.append(_md(text))
                if detail:
                    details.append(f"- **{fam}**, {combo_label(c)}: {detail}")
            lines.append("| " + " | ".join(row) + " |")
        if details:
            lines += ["", "What changed:", ""] + details
    bad = [c for c in combos if c["status"] != "ok"]
    if bad:
        lines += ["", "Not run:", ""]
        lines += [f"- {combo_label(c)}: {c['status']}: {c.get('reason', '')}".rstrip(": ") for c in bad]
    if results.get("left_out"):
        lines += ["", "Families left out of this run: " + ", ".join(results["left_out"]) + "."]
    return "\n".join(lines)


def _newest_first(version: str) -> tuple:
    return tuple(-int(x) if x.isdigit() else 0 for x in version.split("."))


def merge_results(old: Optional[dict], new: dict, order: list[str]) -> dict:
    """``new`` with what ``old`` (an earlier run's results) has that ``new`` did not run.

    Records of families this run left out are kept from the same combination in ``old``, and combinations
    this run did not try are kept whole, so a run of a few families (``--families``, ``--skip-gguf``) adds to
    the table. ``old`` counts only when it was made against the same tested versions. ``order``: the zoo's
    family order.
    """
    if not old or old.get("tested") != new["tested"]:
        return new
    merged = dict(new)
    key = lambda c: (c["transformers"], c["trl"])  # noqa: E731
    olds = {key(c): c for c in old.get("combos", [])}
    combos = []
    for c in new["combos"]:
        prev = olds.pop(key(c), None)
        c = dict(c)
        if prev and c["status"] == "ok" and prev.get("status") == "ok":
            c["families"] = {**{f: r for f, r in prev["families"].items() if f not in new["families"]},
                             **c["families"]}
        combos.append(c)
    combos += olds.values()
    combos.sort(key=lambda c: (not c.get("tested"), _newest_first(c["transformers"]), _newest_first(c["trl"])))
    merged["combos"] = combos
    ran = set(new["families"]) | {f for c in combos for f in c.get("families", {})}
    merged["families"] = [f for f in order if f in ran]
    merged["left_out"] = [f for f in order if f not in ran]
    return merged


def replace_between_markers(text: str, block: str, where: str = "the document") -> str:
    """``text`` with the lines between the begin and end markers replaced by ``block`` (markers kept)."""
    lines = text.split("\n")
    begins = [i for i, line in enumerate(lines) if line.startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(begins) != 1 or len(ends) != 1:
        raise MatrixError(f"{where}: needs exactly one '{BEGIN} ... -->' line and one '{END}' line "
                          f"(found {len(begins)} and {len(ends)})")
    b, e = begins[0], ends[0]
    if e < b:
        raise MatrixError(f"{where}: the end marker (line {e + 1}) comes before the begin marker (line {b + 1})")
    return "\n".join(lines[:b + 1] + block.strip("\n").split("\n") + lines[e:])


# ---------------------------------------------------------------- the worker (runs inside a combo's venv)

def worker(result_path: Path, reference_path: Optional[Path], families: Optional[list[str]], label: str,
           tested: bool = False) -> int:
    """Audit every zoo entry with the installed libraries; write the records and the labels.

    ``reference_path``: the tested run's labels, for entries with no stored snapshot; ``tested``: this is that run.
    """
    import contextlib
    import io

    from harness import versions
    from harness.atomic import write_json
    from harness.audit import audit
    from harness.audit.loading import zoo_dir
    from harness.audit.snapshot import read_snapshot, snapshot
    from harness.audit.zoo import load_zoo_spec
    from harness.config import from_env

    run = from_env()
    zoo = zoo_dir(run.tokenizer_zoo)
    entries = [e for e in load_zoo_spec() if families is None or e.name in families]
    reference = json.loads(reference_path.read_text(encoding="utf-8")) if reference_path else {}
    records: dict[str, dict] = {}
    labels: dict[str, dict] = {}
    for k, entry in enumerate(entries):
        print(f"{PROGRESS}{label}: family {k + 1}/{len(entries)} {entry.name} ...", flush=True)
        t0 = time.time()
        rec: dict[str, Any] = {"expect": list(entry.expect)}
        try:
            source = entry.source(zoo, run.gguf_folder)
        except Exception as e:  # an absent GGUF file: the entry is not run, as the claim skips it
            rec.update(status="skipped", error=str(e))
        else:
            folder = source if not isinstance(source, str) and source.is_dir() else None
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    # a GGUF entry converts into this run's fixture folder, so the conversion is this combo's too
                    report = audit(source, cache_root=run.fixtures_dir, **entry.audit_kwargs(folder))
            except Exception as e:  # one family's failure is a cell of the table, not the end of the matrix
                rec.update(status="error", error=f"{type(e).__name__}: {str(e).strip()[:500]}")
            else:
                runs = snapshot(report, entry.format, entry.name)["runs"]
                labels[entry.name] = runs
                rec.update(status="ok", codes=sorted(report.codes), examples=report.examples)

                def decode(i: int, tok=report.tok) -> str:
                    return tok.decode([i])

                if entry.snapshot:
                    stored = read_snapshot(ROOT / entry.snapshot)
                    rec["reference"] = "snapshot"
                    rec["reference_versions"] = stored.get("versions", {})
                    rec["diff"] = compare_runs(stored["runs"], runs, decode)
                elif entry.name in reference:
                    rec["reference"] = "tested run"
                    rec["diff"] = compare_runs(reference[entry.name], runs, decode)
                else:  # the tested run itself: its labels are the reference of the other combos
                    rec["reference"] = "tested run" if tested else None
                    rec["diff"] = None
        rec["seconds"] = round(time.time() - t0, 1)
        records[entry.name] = rec
        text, _ = cell(rec)
        print(f"{PROGRESS}{label}: family {k + 1}/{len(entries)} {entry.name}: {text} ({rec['seconds']} s)",
              flush=True)
    installed = versions.library_versions(("transformers", "trl", "tokenizers", "torch", "jinja2", "datasets",
                                           "accelerate", "huggingface_hub", "peft"))
    write_json(result_path, {"versions": installed, "families": records}, indent=1)
    write_json(result_path.with_name("labels.json"), labels)
    return 0


# ---------------------------------------------------------------- the orchestrator

def _say(msg: str) -> None:
    print(msg, flush=True)


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PIP_CONSTRAINT", None)  # tox's constraint (the tested pins) would fight the combo's own
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def available_versions(name: str) -> list[str]:
    """The package index's versions of ``name`` (``pip index versions``)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name], capture_output=True,
                          text=True, env=_pip_env())
    return parse_pip_index(proc.stdout + proc.stderr)


def project_range(name: str) -> str:
    """The specifier pyproject.toml gives ``name`` (e.g. ``>=5.0,<6``)."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    for dep in deps:
        m = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(.*)$", dep)
        if m and canonical(m.group(1)) == canonical(name):
            return m.group(2).split(";")[0].strip()
    raise MatrixError(f"pyproject.toml: no dependency {name!r}")


def install(combo: dict, venv: Path, constraints: Path, log: Path) -> Optional[str]:
    """Make ``venv`` hold the combo (reused when it already does); None, or pip's reason it cannot."""
    stamp = venv / ".audit-matrix-installed"
    digest = hashlib.sha256(constraints.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        _say(f"  {combo_label(combo)}: venv {venv} is up to date")
        return None
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    # not -q for the project: pip prints "The conflict is caused by:" only at its normal verbosity
    steps = [("torch (CPU) first", pip + ["-q", CPU_TORCH]),
             ("the project with the combo's constraints", pip + ["-c", str(constraints), "-e", f"{ROOT}[test]"])]
    with open(log, "a", encoding="utf-8") as fh:
        for what, cmd in steps:
            _say(f"  {combo_label(combo)}: installing {what} ...")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env())
            fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
            if proc.returncode != 0:
                return pip_reason(proc.stdout + "\n" + proc.stderr)  # the conflict is on stdout, ERROR on stderr
    stamp.write_text(digest)
    return None


def run_worker(combo: dict, venv: Path, out: Path, reference: Optional[Path], families: Optional[list[str]],
               fixtures: Path, zoo: Path, log: Path) -> Optional[str]:
    """Run the worker in ``venv``, echoing its progress; None, or why it failed."""
    cmd = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "worker", "--result",
           str(out / "result.json"), "--label", combo_label(combo)]
    if reference:
        cmd += ["--reference", str(reference)]
    if families:
        cmd += ["--families", ",".join(families)]
    if combo.get("tested"):
        cmd.append("--tested")
    env = _pip_env()
    env["HF_HUB_OFFLINE"] = "1"
    env["HARNESS_FIXTURES_DIR"] = str(fixtures)  # GGUF conversions land here, made by this combo's transformers
    env["PYTHONUNBUFFERED"] = "1"
    env["HARNESS_TOKENIZER_ZOO"] = str(zoo)
    with open(log, "a", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(PROGRESS):
                _say("  " + line[len(PROGRESS):].rstrip())
        proc.wait()
    if proc.returncode != 0:
        tail = [x for x in log.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()][-3:]
        return f"worker exit {proc.returncode}: " + " ".join(tail)[-500:]
    return None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/audit_matrix.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="(inside a combo's venv) audit the zoo with the installed libraries")
    w.add_argument("--result", type=Path, required=True)
    w.add_argument("--reference", type=Path)
    w.add_argument("--families")
    w.add_argument("--label", default="")
    w.add_argument("--tested", action="store_true", help="this venv holds the tested versions")
    parser.add_argument("--transformers", help="versions, comma-separated (default: the last --minors minors)")
    parser.add_argument("--trl", help="versions, comma-separated (default: the last --trl-releases releases)")
    parser.add_argument("--minors", type=int, default=3)
    parser.add_argument("--trl-releases", type=int, default=2)
    parser.add_argument("--families", help="zoo entry names, comma-separated (default: all)")
    parser.add_argument("--skip-gguf", action="store_true", help="leave out the GGUF entries (each converts a model)")
    parser.add_argument("--zoo", type=Path, help="the tokenizer zoo (default: HARNESS_TOKENIZER_ZOO, else "
                        "../shared/tokenizers beside the project, else /work/shared/tokenizers)")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the table in --docs from the results in --json (no installs, no audits)")
    parser.add_argument("--fresh", action="store_true",
                        help="start the results over (default: families and combinations this run does not "
                             "touch are kept from --json)")
    parser.add_argument("--out", type=Path, default=ROOT / ".audit-matrix", help="venvs, logs and raw labels")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "audit.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "audit-matrix.json")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "worker":
            fams = args.families.split(",") if args.families else None
            return worker(args.result, args.reference, fams, args.label, args.tested)
        return orchestrate(args)
    except MatrixError as e:
        print(f"audit-matrix: {e}", file=sys.stderr)
        return 2


def write_table(results: dict, doc_path: Path) -> None:
    """Rewrite the generated section of ``doc_path`` from ``results`` (atomically)."""
    from harness.atomic import write_bytes

    if not doc_path.is_file():
        raise MatrixError(f"{doc_path}: no such file (--docs)")
    text = doc_path.read_text(encoding="utf-8")
    write_bytes(doc_path, replace_between_markers(text, render_table(results), str(doc_path)))


def find_zoo(explicit: Optional[Path]) -> Path:
    """The tokenizer zoo folder: ``explicit``, the run config's, or the shared one; MatrixError when absent."""
    from harness.config import from_env

    candidates = [explicit] if explicit else [from_env().tokenizer_zoo, ROOT.parent / "shared" / "tokenizers",
                                              Path("/work/shared/tokenizers")]
    for c in candidates:
        if c is not None and Path(c).is_dir():
            return Path(c).resolve()
    raise MatrixError(f"no tokenizer zoo folder (tried {', '.join(str(c) for c in candidates if c)}); pass --zoo DIR")


def orchestrate(args: argparse.Namespace) -> int:
    from harness.atomic import write_bytes, write_json

    if args.render:
        try:
            results = json.loads(args.json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise MatrixError(f"{args.json}: cannot read the results ({e})") from None
        write_table(results, args.docs)
        _say(f"table in {args.docs} rewritten from {args.json}")
        return 0
    zoo = find_zoo(args.zoo)

    base = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    pinned = pins_of(base)
    tested = {"transformers": pinned.get("transformers"), "trl": pinned.get("trl")}
    if not all(tested.values()):
        raise MatrixError("constraints.txt: needs transformers==X and trl==Y lines (the tested versions)")
    chosen = {}
    for name, flag, count, per_minor in (("transformers", args.transformers, args.minors, True),
                                         ("trl", args.trl, args.trl_releases, False)):
        if flag:
            chosen[name] = [v.strip() for v in flag.split(",") if v.strip()]
        else:
            spec = project_range(name)
            chosen[name] = pick_versions(available_versions(name), spec, count, per_minor)
            _say(f"{name}: the index's last {count} {'minors' if per_minor else 'releases'} in {spec!r}: "
                 + ", ".join(chosen[name]))
    combos = [{"transformers": tf, "trl": trl} for tf in chosen["transformers"] for trl in chosen["trl"]]
    if tested not in combos:
        combos.append(dict(tested))
    combos.sort(key=lambda c: c != tested)  # the tested combo first: its labels are the others' reference
    for c in combos:
        c["tested"] = c == {"transformers": tested["transformers"], "trl": tested["trl"]}

    import tomllib

    # the entries' names and GGUF keys, read without harness.audit (whose import needs trl and transformers)
    entries = tomllib.loads((ROOT / "fixtures" / "tokenizers.toml").read_text(encoding="utf-8")).get("family", [])
    names = [e["name"] for e in entries]
    wanted = args.families.split(",") if args.families else list(names)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise MatrixError(f"--families: no zoo entry {unknown} in fixtures/tokenizers.toml")
    if args.skip_gguf:
        wanted = [n for n in wanted if not next(e for e in entries if e["name"] == n).get("gguf")]
    families = None if wanted == names else wanted
    out = args.out.resolve()
    results: dict[str, Any] = {"zoo": str(zoo), "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                               "tested": tested, "families": wanted,
                               "left_out": [n for n in names if n not in wanted], "combos": []}
    old = None
    if not args.fresh and args.json.is_file():
        try:
            old = json.loads(args.json.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise MatrixError(f"{args.json}: not JSON ({e}); --fresh starts the results over") from None
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")
    try:  # two runs in one --out would overwrite each other's venvs and reference labels
        import fcntl

        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise MatrixError(f"{out}: another matrix run is using this folder (give it another --out)") from None
    reference: Optional[Path] = None
    t_all = time.time()
    for k, combo in enumerate(combos):
        slug = f"tf{combo['transformers']}-trl{combo['trl']}"
        cdir = out / slug
        cdir.mkdir(parents=True, exist_ok=True)
        log = cdir / "log.txt"
        log.write_text("")
        _say(f"[{k + 1}/{len(combos)}] {combo_label(combo)}" + (" (tested)" if combo["tested"] else ""))
        constraints = cdir / "constraints.txt"
        write_bytes(constraints, rewrite_constraints(base, {"transformers": combo["transformers"],
                                                            "trl": combo["trl"]}))
        entry: dict[str, Any] = dict(combo, families={})
        reason = install(combo, out / "venvs" / slug, constraints, log)
        if reason:
            entry.update(status="not installable", reason=reason)
            _say(f"  not installable: {reason}")
        else:
            failed = run_worker(combo, out / "venvs" / slug, cdir, reference, families, cdir / "fixtures", zoo, log)
            if failed:
                entry.update(status="worker failed", reason=failed)
                _say(f"  {failed}")
            else:
                doc = json.loads((cdir / "result.json").read_text(encoding="utf-8"))
                got = {k: doc["versions"].get(k) for k in ("transformers", "trl")}
                if got != {"transformers": combo["transformers"], "trl": combo["trl"]}:
                    entry.update(status="worker failed", reason=f"the venv holds {got}, not the combination")
                    _say(f"  {entry['reason']}")
                else:
                    entry.update(status="ok", versions=doc["versions"], families=doc["families"])
                    if combo["tested"]:
                        reference = cdir / "labels.json"
        results["combos"].append(entry)
        # after each combo: an interrupted run keeps what it did
        write_json(args.json, merge_results(old, results, names), indent=1)
    write_table(merge_results(old, results, names), args.docs)
    _say(f"done in {time.time() - t_all:.0f} s: table in {args.docs}, results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
