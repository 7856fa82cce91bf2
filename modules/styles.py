"""Prompt styles: A1111's ``styles.csv`` (columns ``name,prompt,negative_prompt``), read and written the same way.

* Files: ``--styles-file`` may be given several times and may be a glob pattern (``styles/*.csv``); the default
  is ``<data-dir>/styles.csv``. A style name seen twice is the later file's. New styles are saved to the first
  file. Rows whose name starts with ``#`` are comments; old two-column files (``name,text``) still load.
* Applying a style (A1111's ``merge_prompts``): if the style's text holds ``{prompt}``, the prompt replaces that
  placeholder; otherwise the style is appended after ``", "`` (empty parts are dropped). Styles apply in the
  order they are given, each to the result of the previous one, and before anything else reads the prompt,
  so the infotext shows the styled prompt.
* Differences from A1111, on purpose: an unknown style name is an error naming the known ones (A1111 ignores
  it silently); the ``---- FILE ----`` dividers A1111 shows between files in the UI's list are not styles; and
  saving a file keeps its rows whose name a later file shadows (A1111 drops them).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import shutil
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")
PLACEHOLDER = "{prompt}"


class StyleNotFoundError(LookupError):
    """A style name that no styles file defines."""


@dataclass(frozen=True, slots=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str
    path: Path | None  # the file it came from (None: not saved yet)


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """One style applied to one prompt (A1111's rule, see the module doc)."""
    if PLACEHOLDER in style_prompt:
        return style_prompt.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: Iterable[str]) -> str:
    """Apply style texts in order, each to the result of the one before."""
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def expand_paths(patterns: Sequence[Path]) -> list[Path]:
    """Every styles file named by ``patterns`` (globs expanded, sorted), first occurrence kept."""
    found: list[Path] = []
    for pattern in patterns:
        if glob.has_magic(pattern.name):
            matches = sorted(Path(p) for p in glob.glob(os.path.join(glob.escape(str(pattern.parent)), pattern.name)))
        else:
            matches = [pattern]
        found.extend(p for p in matches if p not in found)
    return found


class StyleDatabase:
    """The styles of every styles file, in file order. Thread-safe; files are read on construction and ``reload``."""

    def __init__(self, patterns: Sequence[Path]) -> None:
        self.patterns = [Path(p) for p in patterns]
        self._lock = threading.RLock()
        self._files: dict[Path, dict[str, PromptStyle]] = {}  # each file's own rows (a shadowed name is kept)
        self.reload()

    @property
    def default_path(self) -> Path:
        """Where new styles are saved: the first file (or, for a pattern, its first match / ``styles.csv`` there)."""
        first = self.patterns[0]
        if glob.has_magic(first.name):
            matches = expand_paths([first])
            return matches[0] if matches else first.parent / "styles.csv"
        return first

    def reload(self) -> None:
        files = {path: {s.name: s for s in read_csv(path)} for path in expand_paths(self.patterns) if path.is_file()}
        with self._lock:
            self._files = files

    def _effective(self) -> dict[str, PromptStyle]:
        styles: dict[str, PromptStyle] = {}
        for rows in self._files.values():
            styles.update(rows)  # a later file's style wins
        return styles

    @property
    def styles(self) -> list[PromptStyle]:
        with self._lock:
            return list(self._effective().values())

    def get(self, name: str) -> PromptStyle:
        """The style ``name``.

        Raises:
            StyleNotFoundError: naming the styles that exist.
        """
        with self._lock:
            known = self._effective()
        style = known.get(name) if isinstance(name, str) else None
        if style is None:
            listed = ", ".join(repr(n) for n in known) or "none (add them to styles.csv)"
            raise StyleNotFoundError(f"style {name!r} not found; known styles: {listed}")
        return style

    def apply(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """``(prompt, negative prompt)`` with the named styles applied, in order (unknown names raise)."""
        chosen = [self.get(name) for name in names]
        return (apply_styles_to_prompt(prompt, (s.prompt for s in chosen)),
                apply_styles_to_prompt(negative_prompt, (s.negative_prompt for s in chosen)))

    # -- editing (the UI's style editor) -------------------------------------------------------------------
    def save_style(self, name: str, prompt: str, negative_prompt: str) -> PromptStyle:
        """Add or replace a style and write its file (an existing style stays in its own file)."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a style needs a name")
        with self._lock:
            old = self._effective().get(name)
            path = old.path if old is not None and old.path is not None else self.default_path
            style = PromptStyle(name, prompt, negative_prompt, path)
            self._files.setdefault(path, {})[name] = style
            self._write(path)
        return style

    def delete_style(self, name: str) -> None:
        """Remove a style from its file and rewrite that file (a same-named style of another file shows again)."""
        with self._lock:
            style = self.get(name)
            if style.path is not None:
                self._files.get(style.path, {}).pop(name, None)
                self._write(style.path)

    def _write(self, path: Path) -> None:
        """Write ``path``'s own styles (A1111 keeps the previous file as ``.bak``)."""
        rows = list(self._files.get(path, {}).values())
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            shutil.copyfile(path, path.with_name(path.name + ".bak"))
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8-sig", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for style in rows:
                writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
        tmp.replace(path)


def read_csv(path: Path) -> list[PromptStyle]:
    """The styles in one file; an unreadable file is logged and gives none (the server keeps running)."""
    styles = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f, skipinitialspace=True):
                name = row.get("name")
                if not name or name.startswith("#"):
                    continue
                prompt = row.get("prompt") if "prompt" in row else row.get("text")
                styles.append(PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        logger.error("Cannot read styles from %s (%s); ignoring that file.", path, e)
    return styles


def for_state(state) -> StyleDatabase:
    """The app's style database, built on first use from ``state.paths.styles_files`` and kept in ``state``."""
    database = state.libraries.get("styles")
    if database is None:
        database = StyleDatabase(state.paths.styles_files)
        state.libraries["styles"] = database
    return database
