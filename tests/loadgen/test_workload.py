"""Workloads: synthetic, ShareGPT and JSONL traces, seeded and reproducible."""

import json
from pathlib import Path

import numpy as np
import pytest

from loadgen.tokenizer import ApproximateTokenizer, FileTokenizer
from loadgen.workload import (
    Lengths,
    WorkloadError,
    dataset_kind,
    load_dataset,
    sharegpt,
    synthetic,
    trace,
)

APPROX = ApproximateTokenizer()


def test_fixed_lengths_hold_exactly(tokenizer_file: Path) -> None:
    tok = FileTokenizer(tokenizer_file)
    requests = synthetic(10, Lengths(100), Lengths(20), tok, seed=0)
    assert [r.output_len for r in requests] == [20] * 10
    assert [r.prompt_len for r in requests] == [100] * 10
    assert all(tok.count(r.prompt) == 100 for r in requests)
    assert all(r.arrival is None for r in requests)


def test_uniform_lengths_stay_in_range() -> None:
    lengths = Lengths(100, "uniform", 0.5).sample(np.random.default_rng(0), 5000)
    assert min(lengths) >= 50 and max(lengths) <= 150
    assert abs(np.mean(lengths) - 100) < 2
    assert max(lengths) - min(lengths) > 90


def test_lognormal_lengths_have_the_given_mean_and_spread() -> None:
    lengths = np.array(Lengths(200, "lognormal", 0.8).sample(np.random.default_rng(0), 50000))
    assert lengths.mean() == pytest.approx(200, rel=0.03)
    assert lengths.std() / lengths.mean() == pytest.approx(0.8, rel=0.05)
    assert lengths.min() >= 1


@pytest.mark.parametrize(
    ("mean", "dist", "spread"), [(0, "fixed", 0), (10, "gaussian", 0), (10, "uniform", 1.0),
                                 (10, "lognormal", -1)]
)
def test_impossible_lengths_are_refused(mean: int, dist: str, spread: float) -> None:
    with pytest.raises(WorkloadError):
        Lengths(mean, dist, spread)


def test_synthetic_is_reproducible() -> None:
    def make(seed: int):
        return synthetic(20, Lengths(50, "uniform", 0.5), Lengths(30, "lognormal", 1), APPROX, seed)

    assert make(7) == make(7)
    assert make(7) != make(8)


def test_random_token_id_prompts() -> None:
    requests = synthetic(5, Lengths(64), Lengths(8), APPROX, 0, token_ids=True, vocab_size=500)
    for r in requests:
        assert isinstance(r.prompt, list) and len(r.prompt) == 64 == r.prompt_len
        assert all(0 <= i < 500 for i in r.prompt)


def _conversation(question: str, answer: str, first: str = "human") -> dict:
    return {"id": question[:8], "conversations": [
        {"from": first, "value": question}, {"from": "gpt", "value": answer},
        {"from": "human", "value": "and then?"}, {"from": "gpt", "value": "the end"}]}


def test_sharegpt_takes_first_turns_and_answer_lengths(tmp_path: Path) -> None:
    data = [
        _conversation("Tell me about rivers.", "Rivers run down to the sea, mostly."),
        _conversation("What is a mill?", "A mill grinds grain into flour."),
        {"id": "short", "conversations": [{"from": "human", "value": "alone"}]},
        _conversation("Who speaks first?", "The model did.", first="gpt"),
        {"id": "messages", "messages": [{"role": "user", "content": "Hi there."},
                                        {"role": "assistant", "content": "Hello!"}]},
        "not a conversation",
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    requests = sharegpt(path, None, APPROX, seed=0)
    by_prompt = {r.prompt: r for r in requests}
    assert set(by_prompt) == {"Tell me about rivers.", "What is a mill?", "Hi there."}
    assert by_prompt["Tell me about rivers."].output_len == APPROX.count(
        "Rivers run down to the sea, mostly.")
    assert by_prompt["What is a mill?"].prompt_len == APPROX.count("What is a mill?")
    assert by_prompt["Hi there."].output_len == 2
    # More requests than conversations: every one is used before any repeats.
    seven = sharegpt(path, 7, APPROX, seed=0, output_len=16)
    assert len(seven) == 7 and {r.output_len for r in seven} == {16}
    assert {r.prompt for r in seven[:3]} == set(by_prompt)
    assert sharegpt(path, 7, APPROX, seed=0) == sharegpt(path, 7, APPROX, seed=0)


def test_sharegpt_without_usable_conversations_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps([{"conversations": []}]))
    with pytest.raises(WorkloadError, match="no usable conversation"):
        sharegpt(path, 10, APPROX, 0)
    path.write_text("[1, 2")
    with pytest.raises(WorkloadError, match="not valid JSON"):
        sharegpt(path, 10, APPROX, 0)


def test_trace_keeps_its_timing_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    rows = [
        {"timestamp": 12.5, "input_length": 40, "output_length": 8},
        {"timestamp": 10.0, "prompt": "Hello there, river town.", "output_length": 3},
        {"timestamp": 11.0, "input_length": 20, "output_length": 5, "hash_ids": [1, 2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    requests = trace(path, None, APPROX, seed=0)
    assert [r.arrival for r in requests] == [0.0, 1.0, 2.5]
    assert [r.output_len for r in requests] == [3, 5, 8]
    assert requests[0].prompt == "Hello there, river town."
    assert [r.prompt_len for r in requests[1:]] == [20, 40]
    assert APPROX.count(requests[2].prompt) == 40
    assert len(trace(path, 2, APPROX, 0)) == 2


def test_trace_lengths_as_random_token_ids(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 30, "output_length": 4}\n'
                    '{"timestamp": 0.5, "input_length": 12, "output_length": 2}\n')
    requests = trace(path, None, APPROX, 0, token_ids=True, vocab_size=200)
    assert [len(r.prompt) for r in requests] == [30, 12] == [r.prompt_len for r in requests]
    assert all(0 <= i < 200 for r in requests for i in r.prompt)
    assert [r.arrival for r in requests] == [0.0, 0.5]
    path.write_text('{"timestamp": 0, "prompt": "some text", "output_length": 4}\n')
    with pytest.raises(WorkloadError, match="trace.jsonl:1: random token ids need input_length"):
        trace(path, None, APPROX, 0, token_ids=True)


def test_trace_in_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp_ms": 1000, "input_length": 5, "output_length": 2}\n'
                    '{"timestamp_ms": 1250, "input_length": 5, "output_length": 2}\n')
    assert [r.arrival for r in trace(path, None, APPROX, 0)] == [0.0, 0.25]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "trace.jsonl:2: not a JSON object"),
        ('{"input_length": 5, "output_length": 2}', "trace.jsonl:2: missing field timestamp"),
        ('{"timestamp": 1, "output_length": 2}', "missing field prompt or input_length"),
        ('{"timestamp": 1, "input_length": 0, "output_length": 2}', "input_length an int >= 1"),
        ('{"timestamp": "x", "input_length": 3, "output_length": 2}', "timestamp must be"),
    ],
)
def test_trace_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=message):
        trace(path, None, APPROX, 0)


def test_dataset_kind_and_unreadable_datasets(tmp_path: Path) -> None:
    sharegpt_file = tmp_path / "a.json"
    sharegpt_file.write_text(json.dumps([_conversation("Hi?", "Hello.")]))
    trace_file = tmp_path / "b.jsonl"
    trace_file.write_text('{"timestamp": 0, "input_length": 5, "output_length": 2}\n')
    assert dataset_kind(sharegpt_file) == "sharegpt"
    assert dataset_kind(trace_file) == "trace"
    assert load_dataset(trace_file, None, APPROX, 0)[0].output_len == 2
    assert load_dataset(sharegpt_file, 3, APPROX, 0)[0].prompt == "Hi?"
    with pytest.raises(WorkloadError, match="cannot read dataset"):
        dataset_kind(tmp_path / "missing.json")
    with pytest.raises(WorkloadError, match="cannot read dataset"):
        dataset_kind(tmp_path)
    binary = tmp_path / "c.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WorkloadError, match="cannot read dataset"):
        dataset_kind(binary)
    text = tmp_path / "d.txt"
    text.write_text("just some words")
    with pytest.raises(WorkloadError, match="neither a ShareGPT JSON array nor a JSONL trace"):
        dataset_kind(text)
