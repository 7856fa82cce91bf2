"""Textual-inversion embeddings: A1111's "Create embedding" and "Train embedding".

A created embedding holds ``vectors per token`` rows of the text encoder's *token* embedding width: row ``i`` is
the token embedding of the initialization text's token ``i · n_tokens // n_vectors`` (A1111's rule; no text →
zeros). It is written as A1111's ``.pt``::

    {"string_to_token": {"*": 265}, "string_to_param": {"*": (n, C)}, "name", "step", "sd_checkpoint",
     "sd_checkpoint_name"}

Training optimises those vectors only (AdamW, no weight decay, as A1111): prompts from the template get the
embedding's name for ``[name]``, the name's tokens are replaced by the vectors exactly as at generation time
(:mod:`modules.prompt_encoder`), and the text encoder, UNet and VAE stay frozen.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import ftfy
import torch

from modules.textual_inversion.database import find_at
from modules.textual_inversion.formats import EmbeddingFileError, read_embedding_file
from modules.training.runner import TrainingError, TrainResult, TrainSettings, atomic_write, check_new_file, train

logger = logging.getLogger(__name__)

MAX_VECTORS = 75


def clean_name(name: str) -> str:
    """A1111's file-name rule: keep alphanumerics and ``._- ``; an empty result is an error."""
    cleaned = "".join(c for c in str(name) if c.isalnum() or c in "._- ").strip()
    if not cleaned or cleaned in (".", ".."):
        raise TrainingError(f"name {name!r} has no usable characters (letters, digits, '.', '_', '-', ' ')")
    return cleaned


def init_vectors(model, init_text: str, num_vectors: int) -> torch.Tensor:
    """``(num_vectors, C)``: the initialization text's token embeddings spread over the vectors (A1111)."""
    pipe = model.pipe
    table = pipe.text_encoder.get_input_embeddings()
    width = int(table.weight.shape[1])
    vectors = torch.zeros(num_vectors, width)
    if not init_text:
        return vectors
    ids = pipe.tokenizer(ftfy.fix_text(init_text), add_special_tokens=False, truncation=False)["input_ids"][:num_vectors]
    if not ids:
        return vectors
    with torch.no_grad():
        embedded = table(torch.tensor(ids, device=table.weight.device)).float().cpu()
    for i in range(num_vectors):
        vectors[i] = embedded[i * len(ids) // num_vectors]
    return vectors


def embedding_dict(name: str, vectors: torch.Tensor, step: int, checkpoint: tuple[str | None, str | None]) -> dict:
    """A1111's embedding ``.pt`` content."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.detach().float().cpu().clone()},
            "name": name, "step": int(step), "sd_checkpoint": checkpoint[0], "sd_checkpoint_name": checkpoint[1]}


def checkpoint_ids(model) -> tuple[str | None, str | None]:
    """``(short hash, model name)`` of the model trained on, as A1111 records them."""
    return model.info.shorthash, model.info.model_name


def create_embedding(state, name: str, num_vectors_per_token: int = 1, overwrite_old: bool = False,
                     init_text: str = "*") -> Path:
    """Write ``<embeddings dir>/<name>.pt`` and reload the embeddings; returns the file.

    Raises:
        TrainingError: an empty name, a vector count outside 1..75, no model, or an existing file without
            ``overwrite_old``.
    """
    name = clean_name(name)
    if not 1 <= int(num_vectors_per_token) <= MAX_VECTORS:
        raise TrainingError(f"number of vectors per token must be 1..{MAX_VECTORS}; got {num_vectors_per_token}")
    model = state.models.in_use()
    if model is None:
        raise TrainingError("no model is loaded; load a checkpoint first")
    path = state.paths.embeddings_dir / f"{name}.pt"
    check_new_file(path, overwrite_old, "embedding")
    vectors = init_vectors(model, init_text, int(num_vectors_per_token))
    data = embedding_dict(name, vectors, 0, (None, None))
    atomic_write(path, lambda tmp: torch.save(data, tmp))
    if state.embeddings is not None:
        state.embeddings.refresh(model.pipe.text_encoder.config.hidden_size, force=True)
    logger.info("Created embedding %s (%d vectors) at %s", name, vectors.shape[0], path)
    return path


class _TrainingVectors:
    """The embedding being trained, shaped like a database entry (``name``, ``vectors``) for the prompt encoder."""

    def __init__(self, name: str, vectors: torch.nn.Parameter) -> None:
        self.name = name
        self.vectors = vectors


class _TrainingIndex:
    """The ``token_index``/``find_at`` pair :class:`~modules.prompt_encoder.PromptEncoder` expects: the database's
    embeddings, with the one being trained in place of its file's copy. A1111 trains the database entry itself, so
    its training prompts and previews resolve every other embedding in the folder too."""

    find_at = staticmethod(find_at)

    def __init__(self, embedding: _TrainingVectors, database: object | None = None) -> None:
        self.embedding = embedding
        self.database = database
        self._index: tuple[object, object, dict] | None = None  # (tokenizer, the database's index it was made from)

    def token_index(self, tokenizer) -> dict:
        base = self.database.token_index(tokenizer) if self.database is not None else {}
        if self._index is not None and self._index[0] is tokenizer and self._index[1] is base:
            return self._index[2]
        name = self.embedding.name
        index = {first: [(ids, e) for ids, e in entries if e.name != name] for first, entries in base.items()}
        ids = tokenizer([ftfy.fix_text(name)], add_special_tokens=False)["input_ids"][0]
        if ids:
            entries = index.setdefault(ids[0], [])
            entries.append((tuple(ids), self.embedding))
            entries.sort(key=lambda item: len(item[0]), reverse=True)  # longest first, as the database's
        index = {first: entries for first, entries in index.items() if entries}
        self._index = (tokenizer, base, index)
        return index


class EmbeddingTrainable:
    """The runner's view of an embedding under training."""

    kind = "embeddings"
    suffix = ".pt"

    def __init__(self, name: str, vectors: torch.Tensor, step: int, final_path: Path,
                 checkpoint: tuple[str | None, str | None], database: object | None = None) -> None:
        self.name = name
        self.step = step
        self.final_path = final_path
        self.checkpoint = checkpoint
        self.vectors = torch.nn.Parameter(vectors.detach().float().clone())
        self._index = _TrainingIndex(_TrainingVectors(name, self.vectors), database)

    def param_groups(self) -> list[dict]:
        return [{"params": [self.vectors], "weight_decay": 0.0}]

    def activate(self, model) -> AbstractContextManager[None]:
        return nullcontext()

    @property
    def embeddings(self) -> _TrainingIndex:
        """What prompts are encoded with: the folder's embeddings, this one being the one under training."""
        return self._index

    def conditioning(self, encode, prompts: list[str]) -> torch.Tensor:
        return encode(prompts, self._index)

    def set_training(self, on: bool) -> None:
        """Nothing to switch: an embedding has no dropout."""

    def write(self, path: Path) -> None:
        torch.save(embedding_dict(self.name, self.vectors, self.step, self.checkpoint), path)


def train_embedding(state, embedding_name: str, settings: TrainSettings) -> TrainResult:
    """Train the embedding ``embedding_name`` (from the embeddings database) and save it back; run on the queue.

    The final file is ``<embeddings dir>/<name>.pt`` (A1111), copies and previews go to the log folder.
    """
    model = state.models.in_use()
    if model is None:
        raise TrainingError("no model is loaded; load a checkpoint first")
    database = state.embeddings
    if database is None:
        raise TrainingError("there is no embeddings database")
    database.refresh(model.pipe.text_encoder.config.hidden_size)
    entry = database.loaded.get(embedding_name)
    if entry is None:
        known = ", ".join(database.loaded) or "none"
        raise TrainingError(f"embedding {embedding_name!r} not found; create it first (known: {known})")
    try:
        data = read_embedding_file(Path(entry.path))
    except EmbeddingFileError as e:
        raise TrainingError(str(e)) from e
    step = int(data.step or 0) if data is not None else 0
    final = state.paths.embeddings_dir / f"{embedding_name}.pt"
    trainable = EmbeddingTrainable(embedding_name, entry.vectors, step, final, checkpoint_ids(model), database)
    result = train(state, trainable, settings)
    database.refresh(model.pipe.text_encoder.config.hidden_size, force=True)
    return result
