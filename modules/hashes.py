"""SHA-256 of model files, cached in ``cache.json`` by path, modification time and size.

Civitai and A1111 identify checkpoints by the first 10 hex digits of the whole file's sha256 ("Model hash"
in infotexts). Hashing a 2-7 GB file takes seconds, so each result is kept in ``cache.json`` and reused
while the file's mtime and size are unchanged. Other sections of the file (A1111 writes its own there) are
preserved. LoRA ``.safetensors`` files are identified by A1111's "addnet" hash instead (the sha256 of
the bytes after the header), cached in a section of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_SECTION = "sha256-by-path"
_ADDNET_SECTION = "addnet-sha256-by-path"
_BLOCK = 1 << 20


def sha256_of_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def addnet_sha256_of_file(path: Path) -> str:
    """A1111's "addnet" hash of a ``.safetensors`` file: the sha256 of the bytes after the header.

    The header is the 8-byte little-endian length ``n`` and ``n`` bytes of JSON; hashing from ``8 + n`` to the end
    makes the hash independent of the metadata, so editing a LoRA's metadata keeps its hash (kohya's
    ``sshs_model_hash`` is computed the same way).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        f.seek(8 + header_length)
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class HashCache:
    """File hashes remembered across runs. Thread-safe; ``path=None`` keeps them in memory only."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._data: dict[str, dict] | None = None

    def cached(self, file: Path) -> str | None:
        """The cached sha256 of ``file`` if it is still valid, without hashing."""
        key, stamp = self._key(file)
        with self._lock:
            entry = self._load().get(_SECTION, {}).get(key)
        if entry and entry.get("mtime") == stamp[0] and entry.get("size") == stamp[1]:
            return str(entry["sha256"])
        return None

    def sha256(self, file: Path) -> str:
        """The sha256 of ``file``, computed and remembered when the cache has no valid entry."""
        found = self.cached(file)
        if found is not None:
            return found
        key, (mtime, size) = self._key(file)
        start = time.perf_counter()
        value = sha256_of_file(file)
        logger.info("Calculated sha256: file=%s hash=%s time=%.2fs", file.name, value[:10], time.perf_counter() - start)
        with self._lock:
            data = self._load()
            data.setdefault(_SECTION, {})[key] = {"mtime": mtime, "size": size, "sha256": value}
            self._save(data)
        return value

    def _key(self, file: Path) -> tuple[str, tuple[float, int]]:
        st = file.stat()
        return str(file.resolve()), (st.st_mtime, st.st_size)

    def _load(self) -> dict[str, dict]:
        if self._data is None:
            self._data = {}
            if self._path is not None and self._path.exists():
                try:
                    loaded = json.loads(self._path.read_text(encoding="utf-8"))
                    self._data = loaded if isinstance(loaded, dict) else {}
                except (OSError, json.JSONDecodeError) as e:
                    logger.warning("Hash cache %s is unreadable (%s); starting a new one.", self._path, e)
        return self._data

    def _save(self, data: dict[str, dict]) -> None:
        if self._path is None:
            return
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self._path)

    # -- A1111's "addnet" hash of .safetensors (LoRA files); kept in its own section ----------------------------
    def cached_addnet(self, file: Path) -> str | None:
        """The cached addnet sha256 of ``file`` if it is still valid, without hashing."""
        key, stamp = self._key(file)
        with self._lock:
            entry = self._load().get(_ADDNET_SECTION, {}).get(key)
        if entry and entry.get("mtime") == stamp[0] and entry.get("size") == stamp[1]:
            return str(entry["sha256"])
        return None

    def addnet_sha256(self, file: Path) -> str:
        """The addnet sha256 of ``file`` (see :func:`addnet_sha256_of_file`), computed and remembered when needed."""
        found = self.cached_addnet(file)
        if found is not None:
            return found
        key, (mtime, size) = self._key(file)
        start = time.perf_counter()
        value = addnet_sha256_of_file(file)
        logger.info("Calculated addnet sha256: file=%s hash=%s time=%.2fs", file.name, value[:12],
                    time.perf_counter() - start)
        with self._lock:
            data = self._load()
            data.setdefault(_ADDNET_SECTION, {})[key] = {"mtime": mtime, "size": size, "sha256": value}
            self._save(data)
        return value
