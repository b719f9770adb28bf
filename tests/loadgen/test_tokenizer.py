"""Counting and cutting tokens, approximately and with a real tokenizer.json."""

from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from loadgen.tokenizer import ApproximateTokenizer, FileTokenizer, TokenizerError, load_tokenizer

TEXT = "The bridge was older than the church, and the church was older than anyone."


def test_approximate_counts_words_and_marks() -> None:
    tok = ApproximateTokenizer()
    assert tok.count("The cat sat.") == 4
    assert tok.count(TEXT) == 16
    # A long rare word is several BPE tokens, not one.
    assert tok.count(" internationalization") == 3


def test_approximate_cut_is_a_prefix_within_the_budget() -> None:
    tok = ApproximateTokenizer()
    for n in (1, 5, 9, 15, 16, 40):
        cut = tok.cut(TEXT, n)
        assert TEXT.startswith(cut)
        assert tok.count(cut) == min(n, 16)


def test_file_tokenizer_counts_like_the_library(tokenizer_file: Path) -> None:
    tok = FileTokenizer(tokenizer_file)
    reference = HFTokenizer.from_file(str(tokenizer_file))
    assert tok.count(TEXT) == len(reference.encode(TEXT, add_special_tokens=False).ids)
    assert tok.vocab_size == reference.get_vocab_size(with_added_tokens=True)
    assert tok.special_ids() == {0, 1}


def test_file_tokenizer_cuts_exactly(tokenizer_file: Path) -> None:
    tok = FileTokenizer(tokenizer_file)
    total = tok.count(TEXT)
    for n in range(1, total + 1):
        cut = tok.cut(TEXT, n)
        assert TEXT.startswith(cut)
        assert tok.count(cut) == n
    assert tok.cut(TEXT, total + 5) == TEXT


def test_load_tokenizer_takes_a_file_or_its_directory(tokenizer_file: Path) -> None:
    assert load_tokenizer(None).name == "approximate"
    assert load_tokenizer(str(tokenizer_file)).count(TEXT) > 0
    assert load_tokenizer(str(tokenizer_file.parent)).count(TEXT) > 0


def test_load_tokenizer_explains_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="no tokenizer at"):
        load_tokenizer(str(tmp_path))
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load tokenizer"):
        load_tokenizer(str(broken))
