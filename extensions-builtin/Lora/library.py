"""The LoRA library: files under ``--lora-dir`` and the old LyCORIS folder, listed and resolved as A1111 does.

* Discovery: both folders walked recursively (symlinks followed, each real folder once), ``.safetensors``/``.pt``/
  ``.ckpt``, folders then files in natural-sort order, hidden folders and files skipped. The name is the file stem;
  a stem seen twice is the LAST file in walk order (A1111). The alias is ``ss_output_name`` from the metadata.
* Aliases: an alias already taken (by another file's name or alias) becomes *forbidden*, as is ``none``; a forbidden
  alias resolves only as a file name, and ``get_alias`` then gives the file name.
* Metadata: the safetensors JSON header is read directly (8-byte length + JSON; no tensors), values starting with
  ``{`` JSON-decoded, A1111's key order; SD version from ``ss_base_model_version``/``ss_v2``.
* Hashes: A1111's "addnet" sha256 for ``.safetensors``, whole-file sha256 for ``.pt``/``.ckpt``; ``sshs_model_hash``
  in the metadata wins; computed lazily by :meth:`LoraLibrary.read_hash` and cached in ``cache.json``.
* Loading: :meth:`LoraLibrary.load` reads the tensors safely and groups them per live module (``lora_keys``); parsed
  files are kept in an LRU keyed by path and checked against (mtime_ns, size), its size the setting
  ``lora_in_memory_limit``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modules.hashes import HashCache
from modules.model_loading import ModelFileError, read_state_dict

from .lora_keys import KeyMap, ModuleKey, ParsedNetwork, group_state_dict
from .network import NetworkWeights

logger = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".ckpt")
#: A1111 puts these metadata keys first, in this order; the rest keep the file's order.
METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                  "ss_tag_frequency": 20}
#: Aliases that never resolve as aliases. A1111 lists {"none", "Addams"} but compares lower-cased names, so only "none" acts.
ALWAYS_FORBIDDEN = frozenset({"none"})
DEFAULT_CACHE_SIZE = 8
_MAX_HEADER = 100 * 1024 * 1024  # a safetensors header larger than this is not a real file
_Stamp = tuple[int, int]  # (mtime_ns, size)


@dataclass(eq=False)
class NetworkOnDisk:
    """One network file as listed (A1111's ``NetworkOnDisk``). ``hash`` is ``""`` until known."""

    name: str  # file stem
    path: Path
    alias: str  # ss_output_name, else the name
    metadata: dict[str, object]  # safetensors __metadata__, decoded and reordered; {} for .pt/.ckpt
    sd_version: str  # "SD1", "SD2", "SDXL" or "Unknown", from the metadata
    hash: str = ""  # sha256 hex (addnet for .safetensors) or sshs_model_hash
    stamp: _Stamp = (0, 0)

    @property
    def shorthash(self) -> str:
        """The 12 hex digits shown in infotext ``Lora hashes``; ``""`` when the hash is not known yet."""
        return self.hash[:12]

    @property
    def is_safetensors(self) -> bool:
        return self.path.suffix.lower() == ".safetensors"


@dataclass(eq=False)
class LoadedNetwork:
    """A parsed network file, mapped to one model's modules (shared by everyone who loads it while cached)."""

    entry: NetworkOnDisk
    parsed: ParsedNetwork
    mtime_ns: int
    size: int
    key_map_signature: str
    #: The network-type modules built from ``groups`` ({component: {module path: module}}); filled by the
    #: extra network on first use, so they are built once per cached parse.
    modules: dict[str, dict[str, object]] | None = None

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def groups(self) -> dict[ModuleKey, NetworkWeights]:
        return self.parsed.groups

    @property
    def unmatched(self) -> list[str]:
        return self.parsed.unmatched

    @property
    def bundled_embeddings(self) -> dict[str, dict]:
        return self.parsed.bundled_embeddings


@dataclass
class _Tables:
    by_name: dict[str, NetworkOnDisk] = field(default_factory=dict)
    by_alias: dict[str, NetworkOnDisk] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=lambda: set(ALWAYS_FORBIDDEN))

    def register(self, entry: NetworkOnDisk) -> None:
        """A1111's bookkeeping for one file: a taken alias becomes forbidden; name and alias both resolve."""
        self.by_name[entry.name] = entry
        taken = self.by_alias.get(entry.alias)
        if taken is not None and taken.path != entry.path:
            self.forbidden.add(entry.alias.lower())
        self.by_alias[entry.name] = entry
        self.by_alias[entry.alias] = entry


class LoraLibrary:
    """LoRA/LyCORIS files in ``dirs`` (``--lora-dir`` first, then ``--lyco-dir-backcompat``). Thread-safe.

    Nothing is read at construction; the first query lists the folders.

    Args:
        dirs: folders to walk, in order (later files win for equal stems).
        hashes: the shared hash cache (``cache.json``).
        opts: settings (``lora_preferred_name``, ``lora_in_memory_limit``); anything with ``get(key)``.
        no_hashing: ``--no-hashing``: hashes come only from metadata or the cache, never computed.
    """

    def __init__(self, dirs: Iterable[Path], hashes: HashCache, opts: object, no_hashing: bool = False) -> None:
        self.dirs = [Path(d) for d in dirs]
        self.hashes = hashes
        self.opts = opts
        self.no_hashing = no_hashing
        self._lock = threading.RLock()
        self._tables: _Tables | None = None
        self._known: dict[Path, NetworkOnDisk] = {}  # entries by path, reused while the file is unchanged
        self._by_shorthash: dict[str, NetworkOnDisk] = {}
        self._cache: OrderedDict[tuple[str, str], LoadedNetwork] = OrderedDict()
        on_change = getattr(opts, "on_change", None)
        if on_change is not None:
            on_change("lora_in_memory_limit", lambda key, value: self.trim_cache())

    # -- listing ------------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Walk the folders again and rebuild the name/alias tables (``POST /sdapi/v1/refresh-loras``)."""
        tables = _Tables()
        known: dict[Path, NetworkOnDisk] = {}
        for path in self._candidates():
            entry = self._entry_for(path)
            if entry is not None:
                known[path] = entry
                tables.register(entry)
        with self._lock:
            self._tables, self._known = tables, known
            self._by_shorthash = {e.shorthash.lower(): e for e in known.values() if e.hash}
        logger.info("LoRA library: %d networks in %s", len(tables.by_name), ", ".join(map(str, self.dirs)))

    def entries(self) -> list[NetworkOnDisk]:
        """Every listed network, one per name, in discovery order (A1111's ``available_networks``)."""
        tables = self._listed()
        with self._lock:
            return list(tables.by_name.values())

    def find(self, name: str) -> NetworkOnDisk | None:
        """A prompt name → its file, as A1111's ``load_networks`` resolves it (see :meth:`find_many`)."""
        return self.find_many([name])[0]

    def find_many(self, names: list[str]) -> list[NetworkOnDisk | None]:
        """Resolve prompt names; missing ones trigger a rescan of matching stems, then one full rescan."""
        found = [self._lookup(n) for n in names]
        missing = [n for n, e in zip(names, found) if e is None]
        if missing:
            self._rescan_stems(set(missing))
            found = [e or self._lookup(n) for n, e in zip(names, found)]
            if any(e is None for e in found):
                self.refresh()
                found = [e or self._lookup(n) for n, e in zip(names, found)]
        return found

    def get_alias(self, entry: NetworkOnDisk) -> str:
        """How the UI refers to a network: its file name if the setting says so or the alias is forbidden."""
        if self._opt("lora_preferred_name", "Alias from file") == "Filename" or self.is_forbidden(entry.alias):
            return entry.name
        return entry.alias

    def is_forbidden(self, alias: str) -> bool:
        return alias.lower() in self._listed().forbidden

    def by_shorthash(self, shorthash: str) -> NetworkOnDisk | None:
        """The network whose known hash starts with these 12 digits (infotext paste-back)."""
        self._listed()
        with self._lock:
            return self._by_shorthash.get(shorthash[:12].lower())

    def api_list(self) -> list[dict[str, object]]:
        """``GET /sdapi/v1/loras`` items: ``{name, alias, path, metadata}`` (the raw alias, as A1111)."""
        return [{"name": e.name, "alias": e.alias, "path": str(e.path), "metadata": e.metadata} for e in self.entries()]

    # -- hashes -------------------------------------------------------------------------------------------------
    def read_hash(self, entry: NetworkOnDisk) -> str:
        """The entry's hash, computed now if unknown (``""`` with --no-hashing or when the file is gone)."""
        if entry.hash or self.no_hashing:
            return entry.hash
        try:
            value = self.hashes.addnet_sha256(entry.path) if entry.is_safetensors else self.hashes.sha256(entry.path)
        except OSError as e:
            logger.warning("LoRA %s: cannot hash %s (%s)", entry.name, entry.path, e)
            return ""
        with self._lock:
            entry.hash = value
            self._by_shorthash[entry.shorthash.lower()] = entry
        return value

    def shorthash(self, entry: NetworkOnDisk) -> str:
        """The 12-digit hash for infotext ``Lora hashes``, computed now if unknown (``""`` when it cannot be)."""
        return self.read_hash(entry)[:12]

    # -- user metadata (the sidecar .json the Extra Networks editor writes) --------------------------------------
    @staticmethod
    def user_metadata_path(entry: NetworkOnDisk) -> Path:
        return entry.path.with_suffix(".json")

    def user_metadata(self, entry: NetworkOnDisk) -> dict[str, object]:
        """``<file>.json`` beside the network, or ``{}`` (an unreadable one is logged and ignored, as A1111)."""
        path = self.user_metadata_path(entry)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            logger.error("Cannot read LoRA user metadata %s (%s); ignoring it.", path, e)
            return {}
        if not isinstance(data, dict):
            logger.error("LoRA user metadata %s is not a JSON object; ignoring it.", path)
            return {}
        return data

    def write_user_metadata(self, entry: NetworkOnDisk, data: Mapping[str, object]) -> None:
        """Write the sidecar as A1111's editor does (``indent=4, ensure_ascii=False``), atomically."""
        path = self.user_metadata_path(entry)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(data), indent=4, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)

    def sd_version(self, entry: NetworkOnDisk) -> str:
        """The version used for card filtering: the sidecar's ``sd version`` overrides the detected one."""
        override = self.user_metadata(entry).get("sd version")
        return override if isinstance(override, str) and override else entry.sd_version

    # -- loading ------------------------------------------------------------------------------------------------
    def load(self, entry: NetworkOnDisk, key_map: KeyMap) -> LoadedNetwork:
        """The entry's tensors grouped for ``key_map``'s model; the cached parse while the file is unchanged.

        The result's ``entry`` is the file's current listing (re-read when the file changed since it was listed,
        so its metadata and hash match the tensors). A file that matches no module still loads; its keys are in
        ``unmatched`` and logged.

        Raises:
            ModelFileError: the file is gone, unreadable, corrupt or unsafe (the message names it).
        """
        try:
            stat = entry.path.stat()
        except OSError as e:
            raise ModelFileError(f"LoRA file {entry.path.name} cannot be read ({e}); refresh the LoRA list.") from e
        stamp = (stat.st_mtime_ns, stat.st_size)
        cache_key = (str(entry.path), key_map.signature)
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None and (hit.mtime_ns, hit.size) == stamp:
                self._cache.move_to_end(cache_key)
                return hit
        if entry.stamp != stamp:  # the file changed since it was listed: its metadata and hash are stale
            entry = self._relist(entry)
        state_dict = read_state_dict(entry.path)
        parsed = group_state_dict(state_dict, key_map, entry.metadata)
        problems = parsed.problems(entry.path.name)
        if problems:
            logger.warning(problems)
        loaded = LoadedNetwork(entry=entry, parsed=parsed, mtime_ns=stamp[0], size=stamp[1],
                               key_map_signature=key_map.signature)
        with self._lock:
            self._cache[cache_key] = loaded
            self._cache.move_to_end(cache_key)
        self.trim_cache()
        return loaded

    def trim_cache(self) -> None:
        """Drop the least recently used parses beyond ``lora_in_memory_limit``."""
        limit = self._opt("lora_in_memory_limit", DEFAULT_CACHE_SIZE)
        with self._lock:
            while len(self._cache) > max(0, int(limit)):
                self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # -- internals ----------------------------------------------------------------------------------------------
    def _opt(self, key: str, default: object) -> object:
        try:
            return self.opts.get(key)  # type: ignore[attr-defined]
        except (KeyError, AttributeError):
            return default

    def _listed(self) -> _Tables:
        with self._lock:
            tables = self._tables
        if tables is None:
            self.refresh()
            with self._lock:
                tables = self._tables
        assert tables is not None
        return tables

    def _lookup(self, name: str) -> NetworkOnDisk | None:
        tables = self._listed()
        with self._lock:
            if name.lower() in tables.forbidden:
                return tables.by_name.get(name)
            return tables.by_alias.get(name)

    def _rescan_stems(self, stems: set[str]) -> None:
        """A1111's ``update_available_networks_by_names``: read only files whose stem was asked for."""
        tables = self._listed()
        for path in self._candidates():
            if path.stem in stems:
                entry = self._entry_for(path)
                if entry is not None:
                    self._remember(entry, tables)

    def _relist(self, entry: NetworkOnDisk) -> NetworkOnDisk:
        fresh = self._entry_for(entry.path)
        if fresh is None:
            raise ModelFileError(f"LoRA file {entry.path.name} cannot be read; refresh the LoRA list.")
        with self._lock:
            tables = self._tables if self._tables is not None and self._tables.by_name.get(fresh.name) is entry else None
        self._remember(fresh, tables)
        return fresh

    def _remember(self, entry: NetworkOnDisk, tables: _Tables | None) -> None:
        with self._lock:
            self._known[entry.path] = entry
            if tables is not None:
                tables.register(entry)
            if entry.hash:
                self._by_shorthash[entry.shorthash.lower()] = entry

    def _candidates(self) -> list[Path]:
        """Files of every folder, each real file once (the LyCORIS folder may overlap the Lora one)."""
        seen: set[str] = set()
        out = []
        for root in self.dirs:
            for path, real in walk_network_files(root):
                if real not in seen:
                    seen.add(real)
                    out.append(path)
        return out

    def _entry_for(self, path: Path) -> NetworkOnDisk | None:
        """The listed entry for a file: reused while unchanged (keeping a computed hash), else read anew."""
        try:
            stat = path.stat()
        except OSError as e:
            logger.warning("LoRA file %s is not readable (%s); skipped.", path, e)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            old = self._known.get(path)
        if old is not None and old.stamp == stamp:
            return old
        metadata = self._metadata(path) if path.suffix.lower() == ".safetensors" else {}
        alias = metadata.get("ss_output_name")
        entry = NetworkOnDisk(name=path.stem, path=path, alias=alias if isinstance(alias, str) and alias else path.stem,
                              metadata=metadata, sd_version=detect_sd_version(metadata), stamp=stamp)
        sshs = metadata.get("sshs_model_hash")
        if isinstance(sshs, str) and sshs.strip():
            entry.hash = sshs.strip()
        else:
            cached = self.hashes.cached_addnet(path) if entry.is_safetensors else self.hashes.cached(path)
            entry.hash = cached or ""
        return entry

    @staticmethod
    def _metadata(path: Path) -> dict[str, object]:
        try:
            return order_metadata(read_safetensors_metadata(path))
        except ModelFileError as e:
            logger.warning("%s", e)
            return {}


# -- file format helpers ----------------------------------------------------------------------------------------------

def read_safetensors_metadata(path: Path) -> dict[str, object]:
    """The ``__metadata__`` of a safetensors file, read from its JSON header without loading tensors.

    String values that start with ``{`` are JSON-decoded (kohya stores ``ss_tag_frequency`` and others that way);
    those that fail to decode stay strings.

    Raises:
        ModelFileError: the header is not a safetensors header.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= min(_MAX_HEADER, size - 8):
                raise ModelFileError(f"{path.name} is not a safetensors file (header length {length}, file size {size}).")
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path.name}: the safetensors header cannot be read ({e}).") from e
    if not isinstance(header, dict):
        raise ModelFileError(f"{path.name}: the safetensors header is not a JSON object.")
    raw = header.get("__metadata__") or {}
    metadata: dict[str, object] = {}
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        metadata[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                metadata[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return metadata


def order_metadata(metadata: Mapping[str, object]) -> dict[str, object]:
    """A1111's display order: :data:`METADATA_ORDER` keys first, the rest as in the file (a stable sort)."""
    return dict(sorted(metadata.items(), key=lambda item: METADATA_ORDER.get(item[0], 999)))


def detect_sd_version(metadata: Mapping[str, object]) -> str:
    """A1111's rule: ``sdxl_*`` base model → SDXL; ``ss_v2 == "True"`` → SD2; any metadata → SD1; else Unknown."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


def natural_sort_key(text: str) -> list[object]:
    """``x2`` before ``x10``; case-insensitive (A1111's ``natural_sort_key``)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"([0-9]+)", text)]


def walk_network_files(root: Path) -> list[tuple[Path, str]]:
    """Network files under ``root``, each with its real path (symlinks resolved, for de-duplication): folders in
    natural order, then files; hidden ones and symlink loops skipped.

    One ``scandir`` per folder: a file's type comes from the directory entry, so a library of 10 000 files costs
    no ``stat`` per file here, and a real path is resolved once per folder (per file only for symlinked files).
    """
    if not root.is_dir():
        return []
    visited: set[str] = set()
    folders: list[tuple[str, list[tuple[str, str]]]] = []
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        real_folder = os.path.realpath(folder)
        if real_folder in visited:  # a symlink loop, or a folder linked twice
            continue
        visited.add(real_folder)
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            logger.warning("Cannot list %s (%s); skipped.", folder, e)
            continue
        files = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    pending.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in EXTENSIONS and entry.is_file():
                    real = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real_folder, entry.name)
                    files.append((entry.name, real))
            except OSError:  # vanished or unreadable while listing
                continue
        folders.append((folder, files))
    out = []
    for folder, files in sorted(folders, key=lambda item: natural_sort_key(item[0])):
        parent = Path(folder)
        for name, real in sorted(files, key=lambda item: natural_sort_key(item[0])):
            out.append((parent / name, real))
    return out


# -- training tags → trigger words (the metadata editor's "Training dataset tags") -----------------------------------

_WORD = re.compile(r"[-_\w']+")


def build_tags(metadata: Mapping[str, object]) -> list[tuple[str, int]]:
    """``ss_tag_frequency`` summed over dataset folders, most frequent first (A1111's ``build_tags``).

    When the average tag is 16 characters or longer the "tags" are captions; they are split into words
    (``[-_\\w']+``, words under 3 characters dropped) and counted per word.
    """
    counts: dict[str, int] = {}
    frequency = metadata.get("ss_tag_frequency")
    if isinstance(frequency, Mapping):
        for folder_tags in frequency.values():
            if not isinstance(folder_tags, Mapping):
                continue
            for tag, count in folder_tags.items():
                try:
                    counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + int(count)
                except (TypeError, ValueError):
                    continue
    if counts and sum(len(tag) for tag in counts) / len(counts) >= 16:
        words: dict[str, int] = {}
        for text, count in counts.items():
            for word in _WORD.findall(text):
                if len(word) >= 3:
                    words[word] = words.get(word, 0) + count
        counts = words
    return sorted(counts.items(), key=lambda item: item[1], reverse=True)


def random_prompt_from_tags(tags: list[tuple[str, int]], rng: random.Random | None = None) -> str:
    """The editor's "Random prompt": each tag kept with probability ``count / max count``, brackets escaped, sorted."""
    rng = rng or random.Random()
    if not tags:
        return ""
    top = tags[0][1]
    picked = []
    for tag, count in tags:
        if count > rng.random() * top:
            for char in "({[]})":
                tag = tag.replace(char, "\\" + char)
            picked.append(tag)
    return ", ".join(sorted(picked))
