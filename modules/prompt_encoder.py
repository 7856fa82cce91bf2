"""Prompt text → CLIP embeddings, chunk by chunk, the way A1111's ``FrozenCLIPEmbedderWithCustomWords`` does it.

* The text is split into emphasis segments (``prompt_parser.parse_prompt_attention``); each segment is tokenised
  on its own (BPE never merges across a bracket), with ftfy's text fixing first, as A1111's tokenizer does.
* Tokens fill chunks of 75; each chunk becomes ``[BOS] + 75 + [EOS]`` (padded with EOS) and is encoded alone;
  the outputs are concatenated to ``(B, 77·k, C)``. ``BREAK`` closes a chunk; with "comma padding backtrack" a
  full chunk moves the words after its last comma into the next chunk; an embedding is never split.
* Textual-inversion embeddings are found by token ids (longest name first); their vectors replace the token
  embeddings of placeholder tokens (before position embeddings) through a forward hook on the token-embedding
  module that lives only while a chunk is encoded.
* Emphasis modes: "Original" multiplies by the weights and restores the mean of the whole chunk tensor, "No norm"
  only multiplies, "Ignore" parses but does not weight, "None" does not parse at all (no BREAK either).
* Clip skip N (A1111) takes the hidden states N layers from the end and applies the final layer norm.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from modules import prompt_parser

CHUNK = 75  # tokens per chunk without BOS/EOS
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass
class PromptChunk:
    """Up to 75 tokens with their emphasis weights and the embeddings placed in them (offset, embedding)."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, object]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class EncoderOptions:
    """The settings that change how a prompt is encoded (and therefore belong in any cache key)."""

    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20


class PromptEncoder:
    """Encodes prompts for one text encoder + tokenizer, optionally with an embedding database."""

    def __init__(self, text_encoder: torch.nn.Module, tokenizer, embeddings=None,
                 options: EncoderOptions = EncoderOptions()) -> None:
        if options.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis mode must be one of {', '.join(EMPHASIS_MODES)}; got {options.emphasis!r}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.embeddings = embeddings
        self.options = options
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        # one lookup, not get_vocab(): that copies the 49k-entry vocabulary (~20 ms) for every encoder built
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        self.comma_token = comma if comma != tokenizer.unk_token_id else None
        self._index = embeddings.token_index(tokenizer) if embeddings is not None else {}

    # -- tokenising ------------------------------------------------------------------------------------------
    def tokenize_segments(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (no BOS/EOS), after ftfy's text fixing as in A1111's tokenizer."""
        import ftfy

        if not texts:
            return []
        return self.tokenizer([ftfy.fix_text(t) for t in texts], truncation=False, add_special_tokens=False,
                              verbose=False)["input_ids"]

    def tokenize_line(self, line: str) -> tuple[list[PromptChunk], int]:
        """Chunks for one prompt and A1111's token count (75 per full chunk + the last chunk's length)."""
        if self.options.emphasis == "None":
            parsed = [[line, 1.0]]
        else:
            parsed = prompt_parser.parse_prompt_attention(line)
        builder = _ChunkBuilder(self)
        for ids, (text, weight) in zip(self.tokenize_segments([t for t, _ in parsed]), parsed):
            if text == "BREAK" and weight == -1:
                builder.close()
                continue
            builder.add_segment(ids, float(weight))
        return builder.finish()

    def token_count(self, line: str) -> tuple[int, int]:
        """The UI counter: ``(tokens used, ceil(used/75)·75)``, e.g. (12, 75)."""
        _, count = self.tokenize_line(line)
        return count, max(1, -(-count // CHUNK)) * CHUNK

    # -- encoding --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[object]]:
        """``(B, 77·k, C)`` embeddings for ``texts`` and the embeddings they used (in order, for TI hashes)."""
        batch = [self.tokenize_line(text)[0] for text in texts]
        count = max(len(chunks) for chunks in batch)
        used: list[object] = []
        outputs = []
        for index in range(count):
            chunks = [chunks[index] if index < len(chunks) else self._empty_chunk() for chunks in batch]
            for chunk in chunks:
                used.extend(e for _, e in chunk.fixes if e not in used)
            outputs.append(self.encode_chunks(chunks))
        return torch.cat(outputs, dim=1), used

    def _empty_chunk(self) -> PromptChunk:
        return PromptChunk([self.id_start] + [self.id_end] * (CHUNK + 1), [1.0] * (CHUNK + 2))

    def encode_chunks(self, chunks: list[PromptChunk]) -> torch.Tensor:
        """Run the text encoder on one batch of 77-token chunks (TI vectors spliced in, clip skip, emphasis).

        Public because the trainers encode their captions exactly as generation does, with autograd on.
        """
        device = next(self.text_encoder.parameters()).device
        tokens = torch.tensor([c.tokens for c in chunks], device=device)  # (B, 77)
        with _embedding_fixes(self.text_encoder, [c.fixes for c in chunks]):
            z = self._transformer(tokens)  # (B, 77, C)
        weighted = any(m != 1.0 for c in chunks for m in c.multipliers)
        if weighted and self.options.emphasis in ("Original", "No norm"):
            multipliers = torch.tensor([c.multipliers for c in chunks], device=device, dtype=z.dtype)
            original_mean = z.mean()
            z = z * multipliers.unsqueeze(-1)  # (B, 77, C)
            new_mean = z.mean()
            if self.options.emphasis == "Original" and new_mean != 0:  # 0 only for degenerate (untrained) models
                z = z * (original_mean / new_mean)
        return z

    def _transformer(self, tokens: torch.Tensor) -> torch.Tensor:
        skip = self.options.clip_skip
        if skip <= 1:
            return self.text_encoder(input_ids=tokens).last_hidden_state
        out = self.text_encoder(input_ids=tokens, output_hidden_states=True)
        hidden = out.hidden_states[-min(skip, len(out.hidden_states) - 1)]
        return getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm(hidden)


class _ChunkBuilder:
    """A1111's ``tokenize_line`` loop: fills chunks, honouring BREAK, comma backtrack and whole embeddings."""

    def __init__(self, encoder: PromptEncoder) -> None:
        self.encoder = encoder
        self.chunks: list[PromptChunk] = []
        self.chunk = PromptChunk()
        self.token_count = 0
        self.last_comma = -1

    def close(self, is_last: bool = False) -> None:
        chunk, end = self.chunk, self.encoder.id_end
        self.token_count += len(chunk.tokens) if is_last else CHUNK
        pad = CHUNK - len(chunk.tokens)
        chunk.tokens = [self.encoder.id_start] + chunk.tokens + [end] * max(pad, 0) + [end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0] * max(pad, 0) + [1.0]
        self.chunks.append(chunk)
        self.chunk = PromptChunk()
        self.last_comma = -1

    def add_segment(self, ids: list[int], weight: float) -> None:
        encoder, position = self.encoder, 0
        backtrack = encoder.options.comma_padding_backtrack
        while position < len(ids):
            token = ids[position]
            chunk = self.chunk
            if token == encoder.comma_token:
                self.last_comma = len(chunk.tokens)
            elif (backtrack and len(chunk.tokens) == CHUNK and self.last_comma != -1
                  and len(chunk.tokens) - self.last_comma <= backtrack):
                cut = self.last_comma + 1
                moved = (chunk.tokens[cut:], chunk.multipliers[cut:])
                del chunk.tokens[cut:], chunk.multipliers[cut:]
                self.close()
                self.chunk.tokens, self.chunk.multipliers = list(moved[0]), list(moved[1])
            if len(self.chunk.tokens) == CHUNK:
                self.close()
            found = encoder.embeddings.find_at(ids, position, encoder._index) if encoder._index else None
            if found is None:
                self.chunk.tokens.append(token)
                self.chunk.multipliers.append(weight)
                position += 1
                continue
            embedding, covered = found
            vectors = int(embedding.vectors.shape[0])
            if len(self.chunk.tokens) + vectors > CHUNK:
                self.close()
            self.chunk.fixes.append((len(self.chunk.tokens), embedding))
            self.chunk.tokens += [0] * vectors
            self.chunk.multipliers += [weight] * vectors
            position += covered

    def finish(self) -> tuple[list[PromptChunk], int]:
        if self.chunk.tokens or not self.chunks:
            self.close(is_last=True)
        return self.chunks, self.token_count


@contextmanager
def _embedding_fixes(text_encoder: torch.nn.Module, fixes: list[list[tuple[int, object]]]) -> Iterator[None]:
    """While active, the token-embedding output gets each embedding's vectors at its placeholder positions.

    Offsets count from after BOS (hence ``+1``); vectors that would run past the window are clipped.
    """
    if not any(fixes):
        yield
        return

    def replace(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()  # (B, 77, C)
        for row, row_fixes in enumerate(fixes):
            for offset, embedding in row_fixes:
                vectors = embedding.vectors.to(device=output.device, dtype=output.dtype)
                count = min(output.shape[1] - offset - 1, vectors.shape[0])
                output[row, offset + 1: offset + 1 + count] = vectors[:count]
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
