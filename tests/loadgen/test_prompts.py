"""Prompts of a requested length, cut from English text or drawn as random token ids."""

from pathlib import Path

import numpy as np

from loadgen.prompts import SENTENCES, PromptMaker
from loadgen.tokenizer import ApproximateTokenizer, FileTokenizer


def test_corpus_is_plain_english_sentences() -> None:
    assert len(SENTENCES) > 50
    assert all(s[0].isupper() and s[-1] in ".?!" for s in SENTENCES)


def test_prompts_have_exactly_the_requested_tokens_with_a_tokenizer(tokenizer_file: Path) -> None:
    tok = FileTokenizer(tokenizer_file)
    maker = PromptMaker(tok, np.random.default_rng(0), vocab_size=1000)
    for n in (1, 7, 64, 300, 2500):
        for _ in range(3):
            assert tok.count(maker.text(n)) == n


def test_prompts_match_the_estimate_without_a_tokenizer() -> None:
    tok = ApproximateTokenizer()
    maker = PromptMaker(tok, np.random.default_rng(0), vocab_size=1000)
    for n in (1, 10, 256, 3000):
        assert tok.count(maker.text(n)) == n


def test_prompts_differ_so_a_prefix_cache_cannot_share_them() -> None:
    maker = PromptMaker(ApproximateTokenizer(), np.random.default_rng(1), vocab_size=1000)
    prompts = [maker.text(64) for _ in range(50)]
    assert len({p[:40] for p in prompts}) > 25
    assert len(set(prompts)) == 50


def test_same_seed_same_prompts() -> None:
    def draw(seed: int) -> list[str]:
        maker = PromptMaker(ApproximateTokenizer(), np.random.default_rng(seed), 1000)
        return [maker.text(32) for _ in range(5)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_random_token_ids_avoid_special_tokens(tokenizer_file: Path) -> None:
    tok = FileTokenizer(tokenizer_file)
    maker = PromptMaker(tok, np.random.default_rng(0), vocab_size=10)
    ids = maker.token_ids(5000)
    assert len(ids) == 5000
    assert all(isinstance(i, int) for i in ids)
    assert set(ids) <= set(range(tok.vocab_size)) - tok.special_ids()
    assert len(set(ids)) > tok.vocab_size // 2  # the whole vocabulary, not the vocab_size given


def test_random_token_ids_without_tokenizer_use_the_given_vocabulary() -> None:
    maker = PromptMaker(ApproximateTokenizer(), np.random.default_rng(0), vocab_size=50)
    ids = maker.token_ids(2000)
    assert min(ids) >= 0 and max(ids) < 50
