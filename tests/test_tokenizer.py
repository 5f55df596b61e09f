"""The CLIP tokenizer built offline from the BPE file shipped in the package."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from services.bitstream.vocabulary import BOS_ID, EOS_ID, MAX_PROMPT_TOKENS, VOCAB_SIZE
from services.prompt.tokenizer import TOKENIZER_DIRNAME, bpe_vocab_path, ids_to_text, load_tokenizer, text_to_ids
from services.settings import CodecSettings

# OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz, as the open_clip_torch 3.3.0 wheel ships it.
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> CodecSettings:
    return CodecSettings(cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tokenizer(settings):
    return load_tokenizer(settings)


def test_vocabulary_size_and_special_ids(tokenizer, settings):
    assert len(tokenizer) == VOCAB_SIZE == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS_ID, EOS_ID) == (49406, 49407)
    assert (settings.cache_dir / TOKENIZER_DIRNAME / "vocab.json").is_file()
    assert load_tokenizer(settings) is tokenizer  # cached in process


@pytest.mark.parametrize(
    "text, ids",
    [
        ("a photo of a cat", [320, 1125, 539, 320, 2368]),
        ("A PHOTO of a Cat", [320, 1125, 539, 320, 2368]),  # CLIP lower-cases
        ("a man riding a bicycle, high quality", [320, 786, 6765, 320, 11652, 267, 1400, 3027]),
    ],
)
def test_known_encodings(tokenizer, text, ids):
    assert text_to_ids(text, tokenizer) == ids


def test_base_tokens_follow_clip_layout(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 256, 512]) == ["!", "!</w>", "in"]


def test_truncates_to_max_prompt_tokens(tokenizer):
    ids = text_to_ids("cat " * 200, tokenizer)
    assert ids == [2368] * MAX_PROMPT_TOKENS


def test_ids_to_text_drops_specials(tokenizer):
    assert ids_to_text([BOS_ID, 320, 1125, 539, 320, 2368, EOS_ID], tokenizer) == "a photo of a cat"
    assert ids_to_text([], tokenizer) == ""


def test_the_vocabulary_file_is_clips_and_ships_with_its_licence():
    path = bpe_vocab_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BPE_SHA256
    licence = path.with_name("LICENSE.bpe_simple_vocab_16e6.txt").read_text()
    assert BPE_SHA256 in licence and "Copyright (c) 2021 OpenAI" in licence and "MIT License" in licence


def test_tokenizer_builds_without_open_clip(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name.split(".")[0] == "open_clip" else real_find_spec(name, *args))
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` raises ImportError
    tokenizer = load_tokenizer(CodecSettings(cache_dir=tmp_path))  # a new folder: files written from scratch
    assert (tmp_path / TOKENIZER_DIRNAME / "merges.txt").is_file()
    assert len(tokenizer) == VOCAB_SIZE
    assert text_to_ids("a man riding a bicycle, high quality", tokenizer) == [320, 786, 6765, 320, 11652, 267, 1400, 3027]
