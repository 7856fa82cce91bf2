"""Rebuild the CLIP ViT-L/14 tokenizer files bundled in ``configs/sd15/tokenizer/`` from open_clip's BPE list.

Stable Diffusion 1.x encodes prompts with OpenAI's CLIP ViT-L/14 text tower, whose tokenizer is a byte-level BPE
with 49408 entries. The web UI must load that tokenizer with no network access, so the four files that
``transformers.CLIPTokenizer.from_pretrained`` reads are committed to the repository. This script shows where those
files come from and regenerates them byte for byte.

Source of the input
    ``bpe_simple_vocab_16e6.txt.gz`` (1,356,917 bytes) ships inside the open_clip wheel (MIT licence)
    as ``open_clip/bpe_simple_vocab_16e6.txt.gz``. Get it without installing open_clip (whose
    dependencies would replace the CPU torch)::

        pip download --no-deps open-clip-torch -d /tmp/oc
        python scripts/make_clip_tokenizer.py /tmp/oc/open_clip_torch-*.whl --check

    The wheel itself or the extracted ``.gz`` may be given.

How the files are derived
    The text file's first line is a header; the following lines are BPE merges in priority order. CLIP keeps
    the first ``49152 - 256 - 2 = 48894`` merges. Its vocabulary is, in id order: the 256 byte symbols of the
    GPT-2 byte-to-unicode table, the same 256 symbols with the end-of-word marker ``</w>``, one token per kept
    merge (the two halves joined), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

What it reproduces
    Written as Hugging Face writes them, the files are byte-identical to those of ``openai/clip-vit-large-patch14``:

    - ``merges.txt``: md5 ``d2bc10797e70c920c14c69729ecdab34``
    - ``vocab.json``: md5 ``a3933521163a0e76cee6094f1d72a9cc``

    ``tokenizer_config.json`` and ``special_tokens_map.json`` carry the same settings as the upstream files
    (77-token context, lower-casing, start/end tokens) in plain-string form; their bytes are not compared.
    ``--check`` verifies the two md5s and exits with status 1 if either differs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("make_clip_tokenizer")

#: Name of the BPE list inside the open_clip package (and wheel).
BPE_MEMBER_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"

#: Number of BPE merges CLIP uses: a 49152-token BPE budget minus 256 byte symbols and 2 special tokens.
NUM_MERGES = 49152 - 256 - 2

#: Size of the final vocabulary: 2 * 256 byte symbols + merges + 2 special tokens.
VOCAB_SIZE = 2 * 256 + NUM_MERGES + 2

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

#: Header line Hugging Face BPE tokenizers expect at the top of ``merges.txt``.
MERGES_HEADER = "#version: 0.2"

#: md5 digests of the files published in the ``openai/clip-vit-large-patch14`` repository.
EXPECTED_MD5: dict[str, str] = {
    "merges.txt": "d2bc10797e70c920c14c69729ecdab34",
    "vocab.json": "a3933521163a0e76cee6094f1d72a9cc",
}

#: Default output folder: the tokenizer of the bundled SD1.5 diffusers config.
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "configs" / "sd15" / "tokenizer"


def byte_symbols() -> list[str]:
    """Return the printable character that stands for each byte value 0..255, in byte order.

    Byte-level BPE works on text in which every byte is one visible, non-whitespace character. Bytes that are
    already printable Latin-1 characters (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the
    remaining 68 bytes are given the code points 256, 257, ... in ascending byte order.

    The list is in CLIP's id order, which is not byte order: first the printable bytes (ascending), then the
    68 shifted ones (ascending). So id 0 is ``!`` and id 255 is the symbol for byte 0xAD.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    printable_set = set(printable)
    mapping: dict[int, str] = {b: chr(b) for b in printable}
    next_code = 256
    for b in range(256):
        if b not in printable_set:
            mapping[b] = chr(next_code)
            next_code += 1
    order = printable + [b for b in range(256) if b not in printable_set]
    return [mapping[b] for b in order]


def read_bpe_text(source: Path) -> str:
    """Return the decompressed BPE list from ``source``.

    Args:
        source: either the ``bpe_simple_vocab_16e6.txt.gz`` file or an open_clip wheel (``.whl``) containing it.

    Raises:
        FileNotFoundError: ``source`` does not exist, or the wheel lacks the BPE member.
    """
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            try:
                compressed = wheel.read(BPE_MEMBER_NAME)
            except KeyError as exc:
                raise FileNotFoundError(f"{source} has no member {BPE_MEMBER_NAME}") from exc
        return gzip.decompress(compressed).decode("utf-8")
    with gzip.open(source, "rb") as fh:
        return fh.read().decode("utf-8")


def select_merges(bpe_text: str) -> list[str]:
    """Return the merges CLIP uses: the first :data:`NUM_MERGES` lines after the header, exactly as written.

    Raises:
        ValueError: the list is shorter than CLIP needs or a merge line is not two space-separated symbols.
    """
    lines = bpe_text.split("\n")
    merges = lines[1 : 1 + NUM_MERGES]
    if len(merges) != NUM_MERGES:
        raise ValueError(f"expected at least {NUM_MERGES} merges after the header, found {len(merges)}")
    for number, merge in enumerate(merges, start=2):
        if len(merge.split(" ")) != 2:
            raise ValueError(f"line {number} is not a merge of two symbols: {merge!r}")
    return merges


def build_vocab(merges: Sequence[str]) -> dict[str, int]:
    """Return CLIP's token-to-id table for the given merges.

    Ids: byte symbols, byte symbols with ``</w>``, one token per merge, then the start and end tokens.

    Raises:
        ValueError: two entries collide, so the table would not have one id per token.
    """
    symbols = byte_symbols()
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols)]
    tokens += ["".join(merge.split(" ")) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"{len(tokens) - len(vocab)} duplicate tokens in the vocabulary")
    return vocab


def tokenizer_config() -> dict[str, object]:
    """Return ``tokenizer_config.json``'s content: the settings SD1.x relies on (77 tokens, lower case)."""
    return {
        "add_prefix_space": False,
        "bos_token": BOS_TOKEN,
        "do_lower_case": True,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": EOS_TOKEN,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS_TOKEN,
    }


def special_tokens_map() -> dict[str, str]:
    """Return ``special_tokens_map.json``'s content. CLIP pads and replaces unknowns with the end token."""
    return {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}


def render_files(bpe_text: str) -> dict[str, bytes]:
    """Return the four tokenizer files, by file name, as the exact bytes to write.

    ``vocab.json`` uses the formatting of the upstream file (2-space indent, sorted keys, raw UTF-8, trailing
    newline) so its md5 can be compared; the two small JSON files use the same style.
    """
    merges = select_merges(bpe_text)
    vocab = build_vocab(merges)
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")

    def as_json(data: object) -> bytes:
        return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")

    return {
        "vocab.json": as_json(vocab),
        "merges.txt": (MERGES_HEADER + "\n" + "\n".join(merges) + "\n").encode("utf-8"),
        "tokenizer_config.json": as_json(tokenizer_config()),
        "special_tokens_map.json": as_json(special_tokens_map()),
    }


def md5_mismatches(files: dict[str, bytes]) -> list[str]:
    """Compare the md5 of each file in :data:`EXPECTED_MD5`; return one message per mismatch (empty if all match)."""
    problems = []
    for name, expected in EXPECTED_MD5.items():
        actual = hashlib.md5(files[name]).hexdigest()
        if actual == expected:
            logger.info("%s md5 %s OK", name, actual)
        else:
            problems.append(f"{name}: md5 {actual}, expected {expected}")
    return problems


def write_files(files: dict[str, bytes], out_dir: Path) -> None:
    """Write ``files`` into ``out_dir`` (created if needed), replacing existing files of the same names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
        logger.info("wrote %s (%d bytes)", out_dir / name, len(data))


def build_arg_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "source", type=Path, help="open_clip's bpe_simple_vocab_16e6.txt.gz, or an open_clip_torch wheel containing it"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify vocab.json and merges.txt against the upstream md5s; on a mismatch write nothing and exit 1",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the tokenizer files; return the process exit status."""
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = render_files(read_bpe_text(args.source))
    except (OSError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    if args.check:
        problems = md5_mismatches(files)
        if problems:
            for problem in problems:
                logger.error("%s", problem)
            return 1
    write_files(files, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
