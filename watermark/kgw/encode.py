"""Text -> token ids for KGW detection, with the generating model's Hugging Face ``tokenizer.json``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

_SURROGATES = re.compile("[\ud800-\udfff]")


class Encoder(Protocol):
    def __call__(self, texts: Sequence[str]) -> list[list[int]]: ...


def tokenizer_encoder(path: str) -> Encoder:
    """Text -> token ids with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library; no torch,
    no ``transformers``). Special tokens are not added: they were not sampled, so they are not scored."""
    from tokenizers import Tokenizer  # imported here: only detection from text needs it

    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises a bare Exception for missing or malformed files
        raise ValueError(f"tokenizer: cannot load {path!r}: {e}") from e
    # A tokenizer.json may carry padding and truncation settings (sentence-transformers models ship
    # "truncation": 128, "padding": Fixed 128): honoured, they would cut every suspect text to the model's
    # training length and score pad ids that were never sampled.
    tok.no_truncation()
    tok.no_padding()

    def encode(texts: Sequence[str]) -> list[list[int]]:
        # A Python str may hold lone surrogates (JSON "\ud800"), which no model samples and which the
        # tokenizers library rejects with a TypeError; they become U+FFFD, as a detokenizer writes them.
        clean = [_SURROGATES.sub("\ufffd", t) for t in texts]
        return [list(e.ids) for e in tok.encode_batch(clean, add_special_tokens=False)]

    return encode
