"""One TOML loader for the declarative files (plans, claim specs, the tokenizer zoo): errors name the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from harness.errors import LoadError


def load_toml(path: str | Path, what: str = "TOML file", error: Callable[[str], Exception] = LoadError) -> dict[str, Any]:
    """Parse ``path``; a missing file or invalid TOML raises ``error`` naming the file (and ``what`` it is)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise error(f"{p}: no such {what}") from None
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text ({e})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{p}: invalid TOML: {e}") from None
