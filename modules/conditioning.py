"""Prompts → CLIP text embeddings the way A1111 builds them.

* The prompt is tokenised without special tokens and cut into chunks of 75 tokens; each chunk becomes
  ``[BOS] + chunk + [EOS]`` padded with EOS to 77 and is encoded on its own; the chunks' outputs are
  concatenated, so a long prompt gives ``(77·k, C)`` instead of being truncated at 77 tokens.
* All prompts of one batch get the same number of chunks (short ones are padded with empty chunks).
* A1111 "Clip skip" N takes the hidden states N layers from the end and applies the final layer norm
  (diffusers' ``clip_skip`` counts from 0, so A1111 N = diffusers N-1).
"""

from __future__ import annotations

import torch

CHUNK_TOKENS = 75  # tokens per chunk, without BOS/EOS


def tokenize_chunks(tokenizer, text: str) -> list[list[int]]:
    """Token ids of ``text`` in chunks of at most 75 (at least one, possibly empty)."""
    ids: list[int] = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]
    return [ids[i:i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]


def token_count(tokenizer, text: str) -> tuple[int, int]:
    """A1111's counter: ``(tokens used, tokens available in the chunks used)``, e.g. (12, 75)."""
    chunks = tokenize_chunks(tokenizer, text)
    return sum(len(c) for c in chunks), len(chunks) * CHUNK_TOKENS


@torch.no_grad()
def encode_prompts(text_encoder: torch.nn.Module, tokenizer, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
    """Embeddings for a batch of prompts.

    Args:
        text_encoder: transformers ``CLIPTextModel``.
        tokenizer: its ``CLIPTokenizer``.
        prompts: one per image.
        clip_skip: A1111 "Clip skip" (1 = the last layer).

    Returns:
        ``(B, 77·k, C)`` in the text encoder's dtype, on its device.
    """
    batch = [tokenize_chunks(tokenizer, p) for p in prompts]
    count = max(len(chunks) for chunks in batch)
    device = next(text_encoder.parameters()).device
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    outputs = []
    for index in range(count):
        rows = [chunks[index] if index < len(chunks) else [] for chunks in batch]
        ids = torch.tensor([[bos] + row + [eos] * (CHUNK_TOKENS + 1 - len(row)) for row in rows], device=device)
        outputs.append(_encode_chunk(text_encoder, ids, clip_skip))  # (B, 77, C)
    return torch.cat(outputs, dim=1)


def _encode_chunk(text_encoder: torch.nn.Module, ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    if clip_skip <= 1:
        return text_encoder(input_ids=ids).last_hidden_state
    out = text_encoder(input_ids=ids, output_hidden_states=True)
    layers = len(out.hidden_states) - 1
    hidden = out.hidden_states[-min(clip_skip, layers)]
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(hidden)
