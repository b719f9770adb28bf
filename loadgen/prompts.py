"""Prompts of a requested token length: corpus sentences in random order, or random token ids."""

from __future__ import annotations

import re

import numpy as np

from loadgen.corpus import TEXT
from loadgen.tokenizer import Tokenizer

SENTENCES: list[str] = re.split(r"(?<=[.?!])\s+", " ".join(TEXT.split()))


class PromptMaker:
    """Builds prompts from the corpus (or random ids), drawing on a seeded generator."""

    def __init__(self, tokenizer: Tokenizer, rng: np.random.Generator, vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self._rng = rng
        # Sentences after the first are joined with a space, so count them that way.
        self._counts = [tokenizer.count(" " + s) for s in SENTENCES]
        vocab = tokenizer.vocab_size or vocab_size
        self._ids = np.setdiff1d(np.arange(vocab), np.fromiter(tokenizer.special_ids(), int))

    def text(self, n: int) -> str:
        """Real English text of `n` tokens (exact with a tokenizer file, else estimated)."""
        parts: list[str] = []
        total = 0
        while True:
            # Random sentence order keeps prompts distinct, so a prefix cache cannot share them.
            while total < n + 8:
                i = int(self._rng.integers(len(SENTENCES)))
                parts.append(SENTENCES[i])
                total += self._counts[i]
            text = " ".join(parts)
            # The per-sentence counts are a sum; the joined text may encode a little shorter.
            total = self.tokenizer.count(text)
            if total >= n:
                return self.tokenizer.cut(text, n)

    def token_ids(self, n: int) -> list[int]:
        """`n` token ids drawn uniformly from the vocabulary, special tokens excluded."""
        return self._rng.choice(self._ids, size=n).tolist()
