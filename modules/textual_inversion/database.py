"""The library of textual-inversion embeddings under ``--embeddings-dir``, as A1111 lists and matches them.

* :meth:`EmbeddingDatabase.refresh` walks the folder recursively (symlinks followed, hidden folders and zero-byte
  files skipped) and reads every embedding file. Unlike A1111, which reloads only when the top folder's own mtime
  grows, it compares a cheap signature — (relative path, mtime, size) of every candidate file — so edits in
  subfolders and files overwritten in place are seen; files whose stamp did not change are not read again.
* Embeddings whose width is not the text encoder's (SD2 1024, SDXL 2048 on SD1's 768) are listed in ``skipped``,
  files that cannot be read in ``errors`` (path → reason); the rest load regardless.
* :meth:`EmbeddingDatabase.token_index` is A1111's ``ids_lookup``: each name tokenised by the CLIP tokenizer, so
  matching in prompts is case-insensitive and punctuation-spacing-insensitive (``bad-hands-5`` = ``bad - hands - 5``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ftfy
import torch

from modules.hashes import HashCache
from modules.textual_inversion.formats import (
    LAYOUT_A1111, LAYOUT_SDXL, EmbeddingData, EmbeddingFileError, is_candidate, read_embedding_file,
)

logger = logging.getLogger(__name__)

#: ``first token id → [(token ids, embedding), ...]``, each list longest first.
TokenIndex = dict[int, list[tuple[tuple[int, ...], "Embedding"]]]
_Stamp = tuple[int, int]  # (mtime_ns, size)


@dataclass(frozen=True, eq=False)
class Embedding:
    """One usable (or skipped) embedding: its vectors ``(n, C)`` float32 on the CPU and what A1111 shows of it."""

    name: str
    vectors: torch.Tensor
    step: int | None
    sd_checkpoint: str | None
    sd_checkpoint_name: str | None
    path: Path
    sha256: str
    layout: str = LAYOUT_A1111

    @property
    def shape(self) -> int:
        """The vector width C (A1111's ``shape``): 768 for SD1, 1024 for SD2, 2048 for SDXL files."""
        return int(self.vectors.shape[1])

    @property
    def vector_count(self) -> int:
        """How many prompt tokens the embedding takes (A1111's ``vectors``)."""
        return int(self.vectors.shape[0])

    @property
    def shorthash(self) -> str:
        """First 12 hex digits of the file's sha256, as in infotext ``TI hashes``."""
        return self.sha256[:12]


def find_at(tokens: Sequence[int], position: int, index: TokenIndex) -> tuple[Embedding, int] | None:
    """The longest embedding whose token ids start at ``tokens[position]``, and how many tokens it covers."""
    if not 0 <= position < len(tokens):
        return None
    for ids, embedding in index.get(tokens[position], ()):
        if tuple(tokens[position:position + len(ids)]) == ids:
            return embedding, len(ids)
    return None


class EmbeddingDatabase:
    """Embeddings found in one folder. Thread-safe; readers see whole snapshots (dicts are replaced, not mutated)."""

    def __init__(self, folder: Path, hashes: HashCache) -> None:
        self.folder = Path(folder)
        self._hashes = hashes
        self._lock = threading.RLock()
        self.loaded: dict[str, Embedding] = {}
        self.skipped: dict[str, Embedding] = {}
        self.errors: dict[str, str] = {}
        self.expected_width: int | None = None
        self._signature: tuple | None = None
        self._parsed: dict[Path, tuple[_Stamp, EmbeddingData | None | str]] = {}
        self._index: tuple[object, TokenIndex] | None = None
        self._shown: tuple | None = None
        #: Bumped at every rebuild: what was encoded with the embeddings (cached conditioning) keys on it, so it does
        #: not matter who triggered the rebuild (a job, the refresh button, a finished training run).
        self.revision = 0

    # --- loading ----------------------------------------------------------------------------------------------

    def refresh(self, expected_width: int, force: bool = False) -> bool:
        """Rescan the folder; reload when a file was added, removed or changed, when the width changed, or when forced.

        ``expected_width`` is the text encoder's hidden size (768 for SD1). ``force`` also re-reads unchanged files.
        Returns whether the database was rebuilt.
        """
        with self._lock:
            files = self._scan()
            signature = (expected_width, tuple((str(rel), stamp) for rel, _, stamp in files))
            if not force and signature == self._signature:
                return False
            if force:
                self._parsed.clear()
            loaded, skipped, errors = self._load(files, expected_width)
            self.loaded = dict(sorted(loaded.items(), key=lambda item: item[0].lower()))
            self.skipped, self.errors = skipped, errors
            self.expected_width, self._signature, self._index = expected_width, signature, None
            self.revision += 1
            self._report()
            return True

    def _scan(self) -> list[tuple[Path, Path, _Stamp]]:
        """Candidate files as (relative path, path, stamp) in A1111's walk order: a folder's files, then its subfolders.

        Names are sorted so the order (and so which duplicate wins) does not depend on the file system. A file that
        cannot be stat-ed gets the stamp (-1, -1) and is reported when loaded.
        """
        if not self.folder.is_dir():
            return []
        found, seen = [], set()
        for root, dirs, names in os.walk(self.folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:  # a symlink loop, or the same folder linked twice
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(root, name)
                if not is_candidate(path):
                    continue
                try:
                    st = path.stat()
                    stamp = (st.st_mtime_ns, st.st_size)
                except OSError:
                    stamp = (-1, -1)
                found.append((path.relative_to(self.folder), path, stamp))
        return found

    def _load(self, files: list[tuple[Path, Path, _Stamp]], expected_width: int):
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, Embedding] = {}
        errors: dict[str, str] = {}
        parsed: dict[Path, tuple[_Stamp, EmbeddingData | None | str]] = {}
        for _, path, stamp in files:
            if stamp[1] == 0:  # zero-byte placeholders (interrupted downloads) are skipped silently, as in A1111
                continue
            cached = self._parsed.get(path)
            result = cached[1] if cached is not None and cached[0] == stamp and stamp[0] >= 0 else self._read(path)
            parsed[path] = (stamp, result)
            if result is None:
                continue
            if isinstance(result, str):
                errors[str(path)] = result
                continue
            try:
                sha256 = self._hashes.sha256(path)
            except OSError as e:
                errors[str(path)] = f"{path.name} could not be hashed ({e})."
                continue
            embedding = Embedding(
                name=result.name, vectors=result.vectors, step=result.step, sd_checkpoint=result.sd_checkpoint,
                sd_checkpoint_name=result.sd_checkpoint_name, path=path, sha256=sha256, layout=result.layout)
            target = loaded if embedding.shape == expected_width else skipped
            previous = target.get(embedding.name)
            if previous is not None:
                logger.warning("Two embeddings are named %r: %s replaces %s (the last one found wins, as in A1111).",
                               embedding.name, path, previous.path)
            target[embedding.name] = embedding
        self._parsed = parsed
        return loaded, skipped, errors

    @staticmethod
    def _read(path: Path) -> EmbeddingData | None | str:
        """Read one file: its data, ``None`` for "not an embedding", or the reason it could not be read."""
        try:
            return read_embedding_file(path)
        except EmbeddingFileError as e:
            logger.warning("Embedding %s was not loaded: %s", path, e)
            return str(e)
        except OSError as e:
            logger.warning("Embedding %s could not be read: %s", path, e)
            return f"{path.name} could not be read ({e})."

    def _report(self) -> None:
        shown = (tuple(self.loaded), tuple(self.skipped), tuple(self.errors))
        if shown == self._shown:
            return
        self._shown = shown
        logger.info("Textual inversion embeddings loaded(%d): %s", len(self.loaded), ", ".join(self.loaded))
        for name, embedding in self.skipped.items():
            kind = "an SDXL embedding" if embedding.layout == LAYOUT_SDXL else f"{embedding.shape} wide"
            logger.info("Embedding %s skipped: %s, this model needs %s.", name, kind, self.expected_width)

    # --- matching -----------------------------------------------------------------------------------------------

    def token_index(self, tokenizer) -> TokenIndex:
        """A1111's ``ids_lookup`` for ``tokenizer`` (a CLIP tokenizer), built once per refresh and tokenizer object.

        Each loaded name is tokenised without BOS/EOS and filed under its first id; each list is sorted longest
        first (stable, so among equal ids the name first in ``loaded`` order wins, like A1111's registration order).
        """
        with self._lock:
            if self._index is not None and self._index[0] is tokenizer:
                return self._index[1]
            embeddings = list(self.loaded.values())
            names = [ftfy.fix_text(e.name) for e in embeddings]  # the same text fixing prompts get
            ids_list = tokenizer(names, add_special_tokens=False, truncation=False)["input_ids"] if names else []
            index: TokenIndex = {}
            for embedding, ids in zip(embeddings, ids_list):
                if not ids:
                    logger.warning("Embedding %r tokenises to nothing and cannot be used in prompts.", embedding.name)
                    continue
                index.setdefault(ids[0], []).append((tuple(ids), embedding))
            for candidates in index.values():
                candidates.sort(key=lambda item: len(item[0]), reverse=True)
            self._index = (tokenizer, index)
            return index

    find_at = staticmethod(find_at)

    # --- API ---------------------------------------------------------------------------------------------------

    def api_payload(self) -> dict:
        """The body of A1111's ``GET /sdapi/v1/embeddings``."""
        def describe(embedding: Embedding) -> dict:
            return {"step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
                    "sd_checkpoint_name": embedding.sd_checkpoint_name, "shape": embedding.shape,
                    "vectors": embedding.vector_count}

        loaded, skipped = self.loaded, self.skipped
        return {"loaded": {name: describe(e) for name, e in loaded.items()},
                "skipped": {name: describe(e) for name, e in skipped.items()}}
