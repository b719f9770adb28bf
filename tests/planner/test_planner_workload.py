"""Workload specs in the load generator's formats."""

from __future__ import annotations

import json
import statistics

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from planner.errors import WorkloadError
from planner.workload import load_workload


def test_fixed_synthetic_lengths_are_exact():
    sample = load_workload("synthetic:in=512,out=128,dist=fixed").sample(50, 0, 4096)
    assert set(sample.prompt_lens) == {512} and set(sample.output_lens) == {128}
    assert sample.unit_gaps is None


def test_lognormal_synthetic_has_the_asked_mean_and_spread():
    sample = load_workload("synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2").sample(
        20000, 1, 10**6)
    assert statistics.mean(sample.prompt_lens) == pytest.approx(755, rel=0.03)
    assert statistics.mean(sample.output_lens) == pytest.approx(187, rel=0.05)
    assert statistics.pstdev(sample.prompt_lens) / 755 == pytest.approx(0.7, rel=0.1)
    assert statistics.pstdev(sample.output_lens) / 187 == pytest.approx(1.2, rel=0.15)


def test_requests_longer_than_the_context_are_redrawn():
    sample = load_workload("synthetic:in=755,out=187,cv=1.5").sample(2000, 2, 2048)
    assert max(p + o for p, o in zip(sample.prompt_lens, sample.output_lens, strict=True)) <= 2048


def test_same_seed_same_requests():
    spec = load_workload("synthetic:in=100,out=50")
    assert spec.sample(30, 7, 4096) == spec.sample(30, 7, 4096)
    assert spec.sample(30, 7, 4096) != spec.sample(30, 8, 4096)


def _sharegpt(tmp_path):
    data = [
        {"conversations": [{"from": "human", "value": "a" * 400},
                           {"from": "gpt", "value": "b" * 80},
                           {"from": "human", "value": "ignored follow-up"}]},
        {"conversations": [{"from": "system", "value": "be nice"},
                           {"from": "human", "value": "one two three four"},
                           {"from": "gpt", "value": "five six"}]},
        {"conversations": [{"from": "human", "value": "no answer"}]},
        {"id": "not a conversation"},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    return path


def test_sharegpt_uses_first_human_turn_and_its_answer(tmp_path):
    workload = load_workload(str(_sharegpt(tmp_path)))
    # characters / 4 without a tokenizer
    assert sorted(workload.pool) == [(4, 2), (100, 20)]
    sample = workload.sample(10, 0, 2048)
    assert set(zip(sample.prompt_lens, sample.output_lens, strict=True)) <= set(workload.pool)


def test_sharegpt_with_a_tokenizer_counts_its_tokens(tmp_path):
    vocab = {"[UNK]": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer_path = tmp_path / "tokenizer.json"
    tokenizer.save(str(tokenizer_path))
    workload = load_workload(str(_sharegpt(tmp_path)), str(tokenizer_path))
    assert (4, 2) in workload.pool  # "one two three four" -> "five six"


def test_trace_replays_arrivals_scaled_to_mean_one(tmp_path):
    path = tmp_path / "trace.jsonl"
    rows = [{"timestamp": 100.0 + 2 * i, "input_len": 10 + i, "output_len": 5} for i in range(5)]
    rows.insert(2, {"timestamp": 101.0, "input_len": 99, "output_len": 9})  # out of order
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    workload = load_workload(str(path))
    sample = workload.sample(6, 0, 4096)
    assert sample.prompt_lens == [10, 99, 11, 12, 13, 14]
    assert sample.unit_gaps[0] == 0
    assert statistics.mean(sample.unit_gaps[1:]) == pytest.approx(1.0)
    longer = workload.sample(14, 0, 4096)  # wraps around
    assert longer.prompt_lens[6:12] == sample.prompt_lens


def test_the_load_generators_trace_format_is_read(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp_ms": 2000, "input_length": 30, "output_length": 4}\n'
                    '{"timestamp_ms": 500, "prompt": "one two three four five six seven eight", '
                    '"output_length": 2}\n'
                    '{"timestamp_ms": 1000, "input_len": 12, "output_len": 3}\n')
    workload = load_workload(str(path))
    assert workload.trace_rate == pytest.approx(1 / 0.75)  # 2 gaps over 1.5 s
    sample = workload.sample(3, 0, 4096)
    assert sample.prompt_lens == [10, 12, 30]  # the text counted as characters / 4
    assert sample.output_lens == [2, 3, 4]
    assert sample.unit_gaps == pytest.approx([0.0, 2 / 3, 4 / 3])  # gaps 0.5 s, 1 s; mean 0.75


@pytest.mark.parametrize(("spec", "message"), [
    ("synthetic:in=100", "needs in=MEAN and out=MEAN"),
    ("synthetic:in=100,out=10,dist=zipf", "unknown length distribution"),
    ("synthetic:in=100,out=10,sigma=2", "unknown synthetic workload field"),
    ("synthetic:in=abc,out=10", "synthetic workload"),
    ("/no/such/file.json", "not a file"),
])
def test_bad_specs_are_explained(spec, message):
    with pytest.raises(WorkloadError, match=message):
        load_workload(spec)


def test_bad_files_are_explained(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"timestamp": 1, "input_len": 3}\n')
    with pytest.raises(WorkloadError, match=r"t.jsonl:1: expected"):
        load_workload(str(trace))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(WorkloadError, match="neither a ShareGPT"):
        load_workload(str(text))
    with pytest.raises(WorkloadError, match="exceed the model's 2048-token context"):
        load_workload("synthetic:in=2000,out=100,dist=fixed").sample(5, 0, 2048)
