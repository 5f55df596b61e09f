"""The token alphabet of the prompt body: CLIP's BPE vocabulary, by size and special ids.

The text coder (``services.bitstream.text_coder``) codes ids of this alphabet and
the decoder conditions on them; the tokenizer (``services.prompt.tokenizer``)
maps text to and from them. These numbers are part of the wire format.
"""

VOCAB_SIZE = 49408  # 256 byte tokens + 256 end-of-word byte tokens + 48,894 merges + BOS + EOS
BOS_ID = 49406  # <|startoftext|>
EOS_ID = 49407  # <|endoftext|>
MAX_PROMPT_TOKENS = 75  # CLIP's 77-token context less BOS and EOS
