"""The tokenizer list (``fixtures/tokenizers.toml``) as frozen, validated entries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from harness.audit.codes import CODES
from harness.audit.loading import FORMATS, REPO_ROOT
from harness.config import DEFAULT_GGUF_DIR
from harness.errors import LoadError

TOKENIZERS_TOML = REPO_ROOT / "fixtures" / "tokenizers.toml"
_PIPELINES = ("trl-sft", "trl-dpo", "hf-clm")
_KEYS = {"name", "hub", "folder", "format", "pipeline", "template", "response_marker", "system_prompt",
         "max_length", "split_special_tokens", "assistant_only_loss", "limit", "expect", "note",
         "gguf", "trust_remote_code", "special_tokens", "fold_system", "snapshot"}
_SPECIAL_KEYS = {"bos_token", "eos_token", "pad_token", "unk_token"}


@dataclass(frozen=True)
class ZooEntry:
    """One family/setup to audit and the verdict it is known to give."""

    name: str
    hub: str
    folder: Optional[str]
    format: str
    pipeline: str
    template: str  # "own" (the tokenizer's), a path relative to the folder, or Jinja text
    response_marker: Optional[str]
    system_prompt: bool
    max_length: Optional[int]
    split_special_tokens: bool
    assistant_only_loss: bool
    limit: Optional[int]
    expect: tuple[str, ...]  # () means clean
    note: str = ""
    gguf: Optional[str] = None  # a GGUF file name in the GGUF folder (HARNESS_GGUF_DIR): its tokenizer is audited
    trust_remote_code: bool = False
    special_tokens: tuple[tuple[str, str], ...] = ()  # tokenizer overrides, e.g. bos_token = eos_token
    fold_system: bool = False
    snapshot: Optional[str] = None  # label snapshot file, relative to the repository root

    def source(self, zoo: Optional[Path], gguf_dir: Optional[Path] = None) -> Union[Path, str]:
        """The GGUF file, the zoo folder, or the hub id to load (GGUF: LoadError when the file is absent).

        ``gguf_dir``: where the GGUF files lie (the run config's ``gguf_folder``; default
        ``~/.cache/harness/gguf``, where ``.ci/fetch-gguf`` puts them).
        """
        if self.gguf:
            path = (gguf_dir if gguf_dir is not None else DEFAULT_GGUF_DIR).expanduser() / self.gguf
            if not path.is_file():
                raise LoadError(f"{self.name}: GGUF file {str(path)!r} is absent (fetch it with .ci/fetch-gguf)")
            return path
        if self.folder and zoo is not None and (zoo / self.folder).is_dir():
            return zoo / self.folder
        return self.hub

    def audit_kwargs(self, folder: Optional[Path]) -> dict[str, Any]:
        """Keyword arguments of :func:`harness.audit.audit` for this entry (``folder``: resolved path or None)."""
        from harness.data import dpo_records, sft_records

        template: Optional[str] = None
        if self.template != "own":
            if "{%" in self.template or "{{" in self.template:
                template = self.template
            else:
                base = folder if folder is not None else REPO_ROOT
                template = str(base / self.template)
        data = None
        if not self.system_prompt:
            data = dpo_records("d1", system=False) if self.format == "preference" \
                else sft_records("d1", fmt=self.format, system=False)
        kwargs: dict[str, Any] = dict(self.special_tokens)
        if self.split_special_tokens:
            kwargs["split_special_tokens"] = True
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        return dict(chat_template=template, fmt=self.format, pipeline=self.pipeline, data=data,
                    max_length=self.max_length, response_marker=self.response_marker, limit=self.limit,
                    assistant_only_loss=self.assistant_only_loss, fold_system=self.fold_system,
                    tokenizer_kwargs=kwargs or None)

    def snapshot_changes(self, report, update: bool = False, root: Path = REPO_ROOT) -> list[str]:
        """Lines naming the sequences whose trained tokens differ from the pinned snapshot ([] if none is pinned).

        ``update`` (``HARNESS_UPDATE_SNAPSHOTS=1`` at the edge) rewrites the pinned file instead, after a
        deliberate upgrade; so does a pinned file that does not exist yet. ``root``: the folder the
        entry's ``snapshot`` path is relative to (the repository).
        """
        from harness.audit.snapshot import compare, write_snapshot

        if not self.snapshot:
            return []
        path = Path(root) / self.snapshot
        if update or not path.is_file():
            if path.is_file():
                path.unlink()
            write_snapshot(report, self.format, path, self.name)
            return []
        diff = compare(report, self.format, path, self.name)
        if not diff.changes and not diff.missing_runs:
            return []
        return [diff.versions_line()] + [c.line() for c in diff.changes] + \
            [f"not in the snapshot: {k}" for k in diff.missing_runs]


def _entry(raw: dict, where: str) -> ZooEntry:
    unknown = set(raw) - _KEYS
    if unknown:
        raise LoadError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_KEYS)}")
    for key in ("name", "hub"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise LoadError(f"{where}: {key!r} must be a non-empty string")
    fmt = raw.get("format", "conversational")
    if fmt not in FORMATS:
        raise LoadError(f"{where}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    pipe = raw.get("pipeline", "trl-dpo" if fmt == "preference" else "trl-sft")
    if pipe not in _PIPELINES:
        raise LoadError(f"{where}: pipeline {pipe!r} is not one of {', '.join(_PIPELINES)}")
    expect = raw.get("expect")
    if expect == "clean":
        codes: tuple[str, ...] = ()
    elif isinstance(expect, list) and expect and all(isinstance(c, str) for c in expect):
        bad = [c for c in expect if c not in CODES]
        if bad:
            raise LoadError(f"{where}: unknown finding code(s) {bad}; known: {', '.join(CODES.names())}")
        codes = tuple(sorted(set(expect)))
    else:
        raise LoadError(f"{where}: 'expect' must be \"clean\" or a non-empty list of finding codes")
    special = raw.get("special_tokens", {})
    if not isinstance(special, dict) or set(special) - _SPECIAL_KEYS or \
            not all(isinstance(v, str) and v for v in special.values()):
        raise LoadError(f"{where}: 'special_tokens' must be a table of {sorted(_SPECIAL_KEYS)} to token strings")
    return ZooEntry(name=raw["name"], hub=raw["hub"], folder=raw.get("folder"), format=fmt, pipeline=pipe,
                    template=raw.get("template", "own"), response_marker=raw.get("response_marker"),
                    system_prompt=bool(raw.get("system_prompt", True)), max_length=raw.get("max_length"),
                    split_special_tokens=bool(raw.get("split_special_tokens", False)),
                    assistant_only_loss=bool(raw.get("assistant_only_loss", False)), limit=raw.get("limit"),
                    expect=codes, note=raw.get("note", ""), gguf=raw.get("gguf"),
                    trust_remote_code=bool(raw.get("trust_remote_code", False)),
                    special_tokens=tuple(sorted(special.items())), fold_system=bool(raw.get("fold_system", False)),
                    snapshot=raw.get("snapshot"))


def load_zoo_spec(path: Union[str, Path] = TOKENIZERS_TOML) -> list[ZooEntry]:
    """All ``[[family]]`` entries of the tokenizer list; errors name the file and the entry."""
    from harness.tomlfile import load_toml

    p = Path(path)
    raw = load_toml(p, "file")
    entries = []
    seen = set()
    for k, item in enumerate(raw.get("family", [])):
        where = f"{p}: family #{k + 1} ({item.get('name', '?')})"
        e = _entry(item, where)
        if e.name in seen:
            raise LoadError(f"{where}: duplicate name {e.name!r}")
        seen.add(e.name)
        entries.append(e)
    if not entries:
        raise LoadError(f"{p}: no [[family]] entries")
    return entries
