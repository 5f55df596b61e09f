"""The CLIP tokenizer built offline from open_clip's BPE file."""

from __future__ import annotations

import pytest

from services.bitstream.vocabulary import BOS_ID, EOS_ID, MAX_PROMPT_TOKENS, VOCAB_SIZE
from services.prompt.tokenizer import TOKENIZER_DIRNAME, ids_to_text, load_tokenizer, text_to_ids
from services.settings import CodecSettings


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
