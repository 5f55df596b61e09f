"""CLIP BPE tokenizer, built offline from the vocabulary file shipped in this package.

The prompt stage speaks in CLIP token ids: the text coder codes them and the
reconstruction stage conditions on them. The vocabulary is the real 49,408-token
CLIP BPE vocabulary, built from ``data/bpe_simple_vocab_16e6.txt.gz`` beside this
module: OpenAI CLIP's merge file, copied byte for byte from the ``open_clip_torch``
3.3.0 wheel (MIT; source, checksum and both licence notices in
``data/LICENSE.bpe_simple_vocab_16e6.txt``). It is package data, so ``pip install .``
ships it; nothing else needs to be installed.

The vocabulary is laid out the way CLIP builds it: the 256 byte-level base
characters, the same 256 with ``</w>`` (end of word), one token per merge rule
(the first 48,894 merges of the file), then ``<|startoftext|>`` (49406) and
``<|endoftext|>`` (49407). ``vocab.json`` and ``merges.txt`` are written once
under ``settings.cache_dir / "clip-tokenizer"`` and loaded with
``transformers.CLIPTokenizer.from_pretrained`` like any checkpoint's tokenizer.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from services.bitstream.vocabulary import BOS_ID, EOS_ID, MAX_PROMPT_TOKENS, VOCAB_SIZE
from services.errors import ModelUnavailableError
from services.settings import CodecSettings

N_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894 merge rules
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
TOKENIZER_DIRNAME = "clip-tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable-character table of byte-level BPE (GPT-2 / CLIP).

    Insertion order matters: printable bytes first, then the remapped ones. This
    order is the order of the 256 base tokens in the vocabulary.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_vocab_path() -> Path:
    """``bpe_simple_vocab_16e6.txt.gz``, shipped with this package (``services/prompt/data``)."""
    path = Path(str(resources.files("services.prompt").joinpath("data", BPE_FILE)))
    if not path.is_file():
        raise ModelUnavailableError(
            f"{BPE_FILE} is missing from the installed package ({path}); reinstall textsketch (pip install .)"
        )
    return path


def build_vocab(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """Build CLIP's token -> id table and merge list from the BPE file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : N_MERGES + 1]  # line 0 is a version header
    if len(merges) != N_MERGES:
        raise ModelUnavailableError(f"{bpe_path} holds {len(merges)} merges, expected {N_MERGES}")
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ModelUnavailableError(f"built a vocabulary of {len(vocab)} tokens, expected {VOCAB_SIZE}")
    return vocab, merges


def write_tokenizer_files(directory: Path) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` into ``directory`` (atomically) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(bpe_vocab_path())
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
    }
    for name, text in files.items():
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(directory / name)
    return directory


@functools.lru_cache(maxsize=4)
def _load(directory: str):
    from transformers import CLIPTokenizer

    path = Path(directory)
    if not (path / "vocab.json").is_file() or not (path / "merges.txt").is_file():
        write_tokenizer_files(path)
    # (bandit B615: a local folder written just above, not a hub download)
    tokenizer = CLIPTokenizer.from_pretrained(str(path), model_max_length=MAX_PROMPT_TOKENS + 2)  # nosec B615
    if len(tokenizer) != VOCAB_SIZE or tokenizer.bos_token_id != BOS_ID or tokenizer.eos_token_id != EOS_ID:
        raise ModelUnavailableError(
            f"tokenizer files in {path} are not the CLIP vocabulary; delete the folder to rebuild them"
        )
    return tokenizer


def load_tokenizer(settings: CodecSettings | None = None):
    """The CLIP tokenizer (``transformers.CLIPTokenizer``), built on first use and cached."""
    settings = settings or CodecSettings()
    return _load(str(Path(settings.cache_dir) / TOKENIZER_DIRNAME))


def text_to_ids(text: str, tokenizer=None) -> list[int]:
    """BPE ids of ``text`` without BOS/EOS, truncated to ``MAX_PROMPT_TOKENS``."""
    tokenizer = tokenizer or load_tokenizer()
    ids = tokenizer(text, add_special_tokens=False, truncation=True, max_length=MAX_PROMPT_TOKENS)["input_ids"]
    return [int(i) for i in ids[:MAX_PROMPT_TOKENS]]


def ids_to_text(ids: Sequence[int], tokenizer=None) -> str:
    """Readable text of token ids (BOS/EOS dropped). Not an inverse of ``text_to_ids``."""
    tokenizer = tokenizer or load_tokenizer()
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()
