"""The hypernetwork files under ``--hypernetwork-dir`` (default ``models/hypernetworks``), as A1111 lists them.

* Every ``**/*.pt`` (recursive, Python's ``glob`` rules: hidden files and folders are skipped), sorted
  case-insensitively by path; the name is the file stem, a later file with the same stem replaces an earlier one,
  and ``None.pt`` is never listed (A1111's ``list_hypernetworks``).
* Nothing is scanned before the first use; :meth:`HypernetworkLibrary.refresh` rescans (the UI/API refresh), and a
  name that is not known triggers one rescan, so a file dropped into the folder works without a refresh.
* Loaded files are kept by (path, mtime, size): switching back to a hypernetwork costs nothing, an edited file is
  read again. A1111 instead re-reads a file on every activation unless its internal name equals the prompt name.
"""

from __future__ import annotations

import glob
import os
import threading
from collections import OrderedDict
from pathlib import Path

from modules.hashes import HashCache
from modules.hypernetworks.hypernetwork import Hypernetwork

_Stamp = tuple[int, int]  # (mtime_ns, size)


class HypernetworkLibrary:
    """Discovery, lookup by name and a small cache of loaded hypernetworks. Thread-safe."""

    def __init__(self, folder: Path, hashes: HashCache, cache_size: int = 8) -> None:
        self.folder = Path(folder)
        self.hashes = hashes
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._files: dict[str, Path] | None = None
        self._loaded: OrderedDict[Path, tuple[_Stamp, Hypernetwork]] = OrderedDict()

    def refresh(self) -> None:
        """Rescan the folder."""
        pattern = os.path.join(glob.escape(str(self.folder)), "**", "*.pt")
        files: dict[str, Path] = {}
        for filename in sorted(glob.glob(pattern, recursive=True), key=str.lower):
            path = Path(filename)
            if path.stem != "None" and path.is_file():
                files[path.stem] = path
        with self._lock:
            self._files = files

    @property
    def names(self) -> list[str]:
        """Every hypernetwork name, in A1111's order."""
        return list(self._listing())

    def find(self, name: str) -> Path | None:
        """The file of ``name`` (a file stem, case-sensitive as in A1111), or None."""
        path = self._listing().get(name)
        if path is None or not path.exists():
            self.refresh()
            path = self._listing().get(name)
        return path

    def load(self, name: str) -> Hypernetwork:
        """The hypernetwork ``name``, read from its file or taken from the cache.

        Raises:
            KeyError: no such name.
            ModelFileError: (a ``ValueError``) the file is unreadable, corrupt, unsafe or not a hypernetwork; the
                message names the file and the problem.
        """
        path = self.find(name)
        if path is None:
            raise KeyError(f"no hypernetwork named {name!r} in {self.folder}")
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._loaded.get(path)
            if cached is not None and cached[0] == stamp:
                self._loaded.move_to_end(path)
                return cached[1]
        hypernetwork = Hypernetwork.load(path)
        with self._lock:
            self._loaded[path] = (stamp, hypernetwork)
            self._loaded.move_to_end(path)
            while len(self._loaded) > max(self.cache_size, 0):
                self._loaded.popitem(last=False)
        return hypernetwork

    def sha256(self, name: str) -> str:
        """The full sha256 of ``name``'s file (cached in ``cache.json``); A1111's short hash is ``[:10]``."""
        path = self.find(name)
        if path is None:
            raise KeyError(f"no hypernetwork named {name!r} in {self.folder}")
        return self.hashes.sha256(path)

    def api_list(self) -> list[dict[str, str]]:
        """``GET /sdapi/v1/hypernetworks``: ``[{"name", "path"}]`` in listing order."""
        return [{"name": name, "path": str(path)} for name, path in self._listing().items()]

    def _listing(self) -> dict[str, Path]:
        if self._files is None:
            self.refresh()
        assert self._files is not None
        return self._files
