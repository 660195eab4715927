"""The docs run as written: every fenced shell command of README.md and docs/*.md is checked against
the code, so the docs cannot drift from it.

The rule (also in the README, "How the docs are tested"):

- a ``bash`` block right after ``<!-- docs-test: run -->`` runs as written, as one bash script in the
  project root on the CPU (findings in a temp folder; the fixture cache is ``$HARNESS_FIXTURES_DIR``
  or one temp folder the blocks share, never the project's ``.fixtures/``).
  ``<!-- docs-test: run, needs FILE -->`` skips it when the GGUF file FILE is not in
  ``$HARNESS_GGUF_DIR``. Long or GPU-only commands are therefore never marked ``run``;
- every other ``python -m harness ...`` command is parsed by the real command-line parser (an unknown
  command, option or choice fails), every ``pytest`` command's options must be listed by
  ``pytest --help``, ``.ci/`` scripts must exist, and paths under fixtures/, .ci/, tests/, docs/,
  claims/ and harness/ must exist;
- ``python`` and ``toml`` blocks must parse, relative links (and their #anchors) must resolve, and
  every ``HARNESS_*`` variable of the code and every ``python -m harness`` option is in docs/options.md.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(r"^<!--\s*docs-test:\s*run(?:,\s*needs\s+(\S+))?\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
PATH_PREFIXES = ("fixtures/", ".ci/", "tests/", "docs/", "claims/", "harness/")
SEPARATORS = {"&&", "||", "|", ";", "(", ")", "&"}


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    run: bool
    needs: str | None

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their docs-test marker."""
    out, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        mark = MARK.match(lines[start - 1]) if start else None
        out.append(Block(path, start + 1, m.group(1), "\n".join(body) + "\n", bool(mark), mark and mark.group(1)))
        i += 1
    return out


ALL = [b for f in DOCS for b in blocks(f)]
SHELL = [b for b in ALL if b.lang in ("bash", "sh", "shell")]


def commands(block: Block) -> list[tuple[int, list[str]]]:
    """Simple commands of a shell block: (line, argv), continuations joined, comments and
    redirections dropped, compound commands split at &&, |, ; and parentheses."""
    out, lines = [], block.text.split("\n")
    i = 0
    while i < len(lines):
        first, text = i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        lex = shlex.shlex(text, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        try:
            tokens = list(lex)
        except ValueError:  # a heredoc body line, e.g. an apostrophe in TOML text
            continue
        cmd: list[str] = []
        skip = False
        for tok in tokens + [";"]:
            if skip:
                skip = False
            elif tok in SEPARATORS:
                if cmd:
                    out.append((block.line + 1 + first, cmd))
                cmd = []
            elif tok in (">", ">>", "<", "2>", "<<"):
                skip = True
            elif not cmd and re.match(r"^[A-Za-z_]\w*=", tok):
                continue  # VAR=value before the command
            else:
                cmd.append(tok)
    return out


CHECKED = [(b, line, argv) for b in SHELL if not b.run for line, argv in commands(b)]


def _id(item) -> str:
    b, line, argv = item
    return f"{b.file.relative_to(ROOT)}:{line} {' '.join(argv)[:60]}"


# ---------------------------------------------------------------------------- the CLI and pytest

def harness_args(argv: list[str]) -> list[str] | None:
    if argv[:3] == ["python", "-m", "harness"]:
        return argv[3:]
    return None


def pytest_args(argv: list[str]) -> list[str] | None:
    if argv[:1] == ["pytest"]:
        return argv[1:]
    if argv[:3] == ["python", "-m", "pytest"]:
        return argv[3:]
    return None


def parse_harness(args: list[str]) -> str | None:
    """None when the real parser accepts ``args``, else its error message."""
    from harness.__main__ import build_parser, leaf_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser = build_parser(args)
            ns, extra = parser.parse_known_args(args)
            if extra:
                leaf_parser(parser, ns).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:
        return None if exc.code == 0 else err.getvalue().strip()
    return None


@lru_cache(maxsize=1)
def pytest_help() -> str:
    out = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def pytest_options() -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", pytest_help()))


def harness_group_options() -> set[str]:
    """The options of the harness group in ``pytest --help``."""
    text = pytest_help().split("fine-tuning claims harness:", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\s+(--[\w-]+)", text, re.M)) | set(re.findall(r",\s*(--[\w-]+)", text))


def harness_cli_options() -> set[tuple[str, str]]:
    """(command, option) for every option of every ``python -m harness`` (sub)command."""
    from harness.__main__ import COMMANDS

    def leaves(name: str, parser: argparse.ArgumentParser):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield name, parser
        for sub, p in (subs[0].choices.items() if subs else ()):
            yield from leaves(f"{name} {sub}", p)

    out = set()
    for cmd, (module, _) in COMMANDS.items():
        p = argparse.ArgumentParser()
        importlib.import_module(module).add_arguments(p)
        for name, leaf in leaves(cmd, p):
            out |= {(name, o) for a in leaf._actions for o in a.option_strings if o not in ("-h", "--help")}
    return out


@pytest.mark.parametrize("item", CHECKED, ids=_id)
def test_documented_command_exists(item):
    block, line, argv = item
    where = f"{block.file.relative_to(ROOT)}:{line}"
    if (args := harness_args(argv)) is not None:
        err = parse_harness(args)
        assert err is None, f"{where}: `{' '.join(argv)}` is refused by the CLI:\n{err}"
    elif (args := pytest_args(argv)) is not None:
        known = pytest_options()
        for tok in args:
            if tok.startswith("-") and tok != "-":
                opt = tok.split("=", 1)[0]
                assert opt in known, f"{where}: pytest has no option {opt} (`{' '.join(argv)}`)"
    elif argv[0].startswith(".ci/"):
        assert os.access(ROOT / argv[0], os.X_OK), f"{where}: {argv[0]} is not an executable script"
    for tok in argv:
        if tok.startswith(PATH_PREFIXES) and not re.search(r"[$*<>{}]|KEY16", tok):
            assert (ROOT / tok).exists(), f"{where}: {tok} does not exist"


def test_every_kind_of_command_is_checked():
    """The docs hold CLI and pytest commands, and the rule sees them (a parser change that saw none
    would make the test above vacuous)."""
    kinds = [("harness" if harness_args(a) is not None else "pytest" if pytest_args(a) is not None else "other")
             for _, _, a in CHECKED]
    assert kinds.count("harness") >= 20 and kinds.count("pytest") >= 5, kinds


# ---------------------------------------------------------------------------- run as written

RUN = [b for b in SHELL if b.run]


@pytest.fixture(scope="module")
def docs_fixtures_dir(tmp_path_factory) -> str:
    """``$HARNESS_FIXTURES_DIR``, else one temp cache for all blocks (a later block reuses an earlier one's nodes)."""
    return os.environ.get("HARNESS_FIXTURES_DIR") or str(tmp_path_factory.mktemp("docs_fixtures"))


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.where)
def test_marked_block_runs_as_written(block, tmp_path, docs_fixtures_dir):
    if block.needs:
        from harness.config import from_env

        if not (from_env().gguf_folder / block.needs).is_file():
            pytest.skip(f"{from_env().gguf_folder / block.needs} is absent: run .ci/fetch-gguf")
    env = dict(os.environ, HARNESS_FINDINGS_DIR=str(tmp_path / "findings"), HARNESS_FIXTURES_DIR=docs_fixtures_dir,
               HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.text], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (f"{block.where} exited {out.returncode}\n--- stdout\n{out.stdout[-3000:]}"
                                 f"\n--- stderr\n{out.stderr[-3000:]}")


def test_the_walkthroughs_are_run():
    text = " ".join(b.text for b in RUN)
    assert "fixtures build" in text and "--base" in text, "swap the model"
    assert "--claims-dir" in text and "-k C9" in text, "add a finding"


# ---------------------------------------------------------------------------- other blocks, links

@pytest.mark.parametrize("block", [b for b in ALL if b.lang in ("python", "toml")], ids=lambda b: b.where)
def test_code_blocks_parse(block):
    if block.lang == "python":
        ast.parse(block.text, filename=block.where)
    else:
        tomllib.loads(block.text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_links_between_docs_resolve():
    bad = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                bad.append(f"{doc.name}: {target}: no such file")
            elif anchor and anchor not in _anchors(dest):
                bad.append(f"{doc.name}: {target}: no heading #{anchor} in {dest.name}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------- options.md is complete

OPTIONS = ROOT / "docs" / "options.md"


def test_every_environment_variable_is_documented():
    used = set()
    for folder in ("harness", "claims", "tests", ".ci"):
        for f in (ROOT / folder).rglob("*"):
            if f.is_file() and f.suffix in (".py", "") and "__pycache__" not in f.parts:
                used |= set(re.findall(r"\bHARNESS_[A-Z0-9_]*[A-Z0-9]\b", f.read_text(errors="ignore")))
    used |= set(re.findall(r"\bHARNESS_[A-Z0-9_]*[A-Z0-9]\b", (ROOT / "conftest.py").read_text()))
    assert len(used) > 30
    documented = set(re.findall(r"`(HARNESS_[A-Z0-9_]+)`", OPTIONS.read_text()))
    assert not used - documented, f"not in docs/options.md: {sorted(used - documented)}"
    assert not documented - used, f"documented but read nowhere: {sorted(documented - used)}"


def test_every_option_is_documented():
    text = OPTIONS.read_text()
    rows = {(m.group(1), o) for m in re.finditer(r"^\| ([a-z ]+?) \| (.+?) \|", text, re.M)
            for o in re.findall(r"`(--[\w-]+)`", m.group(2))}
    missing = sorted(harness_cli_options() - rows)
    assert not missing, f"python -m harness options not in docs/options.md: {missing}"
    extra = sorted({r for r in rows if r[0] != "option"} - harness_cli_options())
    assert not extra, f"docs/options.md lists options the CLI does not have: {extra}"
    pytest_documented = set(re.findall(r"`(--[\w-]+)", text.split("## pytest options", 1)[1].split("\n## ", 1)[0]))
    assert not harness_group_options() - pytest_documented, sorted(harness_group_options() - pytest_documented)
    assert not pytest_documented - pytest_options(), sorted(pytest_documented - pytest_options())


# ---------------------------------------------------------------------------- README and CI

def test_readme_is_short():
    assert (ROOT / "README.md").stat().st_size <= 12 * 1024


def test_readme_test_command_is_what_ci_runs():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip().startswith("python -m pytest")]
    assert ci == ["python -m pytest"]
    shown = [b.text.strip() for b in blocks(ROOT / "README.md") if b.lang == "bash"]
    assert ci[0] in shown, "README's Tests section shows the command .ci/run runs"
    ci_text = (ROOT / ".ci" / "run").read_text().replace("python3 -m pip install -q", "pip install")
    for install in ("pip install torch==2.13.0", 'pip install -c constraints.txt -e ".[test]"',
                    ".ci/fetch-gguf smollm2 gemma3"):
        assert install in ci_text and install in (ROOT / "README.md").read_text(), install
