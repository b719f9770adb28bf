"""Workloads: the requests of a benchmark, synthetic or read from a ShareGPT file or a trace."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadgen.prompts import PromptMaker
from loadgen.tokenizer import Tokenizer

DISTRIBUTIONS = ("fixed", "uniform", "lognormal")
# Used for random token ids when no tokenizer tells the real vocabulary; every common model
# vocabulary (Llama 2, GPT-2, SmolLM2, Llama 3, Qwen) has at least this many tokens.
DEFAULT_VOCAB_SIZE = 32000


class WorkloadError(Exception):
    """The workload could not be built: bad lengths or an unreadable or malformed dataset."""


@dataclass(frozen=True)
class Request:
    """One request to send: a prompt (text or token ids) and how many tokens to generate."""

    prompt: str | list[int]
    prompt_len: int  # tokens, as the workload counted them; the server's usage wins when reported
    output_len: int  # sent as max_tokens
    arrival: float | None = None  # seconds from the trace's start; only traces carry it


@dataclass(frozen=True)
class Lengths:
    """A length distribution: `fixed` at mean, `uniform` within mean*(1 +- spread), or
    `lognormal` with the given mean and coefficient of variation `spread`."""

    mean: int
    dist: str = "fixed"
    spread: float = 0.0

    def __post_init__(self) -> None:
        if self.mean < 1:
            raise WorkloadError(f"length must be at least 1 token (got {self.mean})")
        if self.dist not in DISTRIBUTIONS:
            raise WorkloadError(f"unknown length distribution {self.dist!r} ({DISTRIBUTIONS})")
        if self.spread < 0 or (self.dist == "uniform" and self.spread >= 1):
            raise WorkloadError(
                f"spread {self.spread} out of range (uniform: 0 <= spread < 1; lognormal: >= 0)"
            )

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        """`n` lengths, each at least 1."""
        if self.dist == "fixed" or self.spread == 0:
            values = np.full(n, float(self.mean))
        elif self.dist == "uniform":
            low, high = self.mean * (1 - self.spread), self.mean * (1 + self.spread)
            values = rng.uniform(low, high, n)
        else:
            sigma2 = math.log1p(self.spread**2)
            values = rng.lognormal(math.log(self.mean) - sigma2 / 2, math.sqrt(sigma2), n)
        return [max(1, round(v)) for v in values]


def synthetic(
    num: int,
    input_lengths: Lengths,
    output_lengths: Lengths,
    tokenizer: Tokenizer,
    seed: int,
    *,
    token_ids: bool = False,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> list[Request]:
    """`num` requests with sampled lengths; prompts are corpus text, or random ids if asked."""
    rng = np.random.default_rng(seed)
    maker = PromptMaker(tokenizer, rng, vocab_size)
    inputs = input_lengths.sample(rng, num)
    outputs = output_lengths.sample(rng, num)
    requests = []
    for n_in, n_out in zip(inputs, outputs, strict=True):
        prompt: str | list[int] = maker.token_ids(n_in) if token_ids else maker.text(n_in)
        requests.append(Request(prompt, n_in, n_out))
    return requests


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"cannot read dataset {path}: {exc}") from exc


def _first_exchange(entry: Any) -> tuple[str, str] | None:
    """The first user turn and the answer to it, from a ShareGPT-style conversation."""
    if not isinstance(entry, dict):
        return None
    turns = entry.get("conversations", entry.get("messages"))
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    texts = []
    for turn in turns[:2]:
        if not isinstance(turn, dict):
            return None
        text = turn.get("value", turn.get("content"))
        if not isinstance(text, str) or not text.strip():
            return None
        texts.append(text)
    speaker = turns[0].get("from", turns[0].get("role"))
    if speaker not in ("human", "user"):
        return None
    return texts[0], texts[1]


def sharegpt(
    path: Path, num: int | None, tokenizer: Tokenizer, seed: int, output_len: int | None = None
) -> list[Request]:
    """First turns of ShareGPT conversations, generating as many tokens as the recorded answer
    (or `output_len`); sampled without repeats until the file runs out, then cycled. `num`
    None takes every usable conversation once."""
    try:
        entries = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise WorkloadError(f"dataset {path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise WorkloadError(f"dataset {path} is not a ShareGPT list of conversations")
    exchanges = [ex for ex in map(_first_exchange, entries) if ex is not None]
    if not exchanges:
        raise WorkloadError(
            f"dataset {path} has no usable conversation (a human turn followed by an answer)"
        )
    rng = np.random.default_rng(seed)
    num = num or len(exchanges)
    order: list[int] = []
    while len(order) < num:
        order.extend(rng.permutation(len(exchanges)).tolist())
    requests = []
    for i in order[:num]:
        prompt, answer = exchanges[i]
        n_out = output_len or max(1, tokenizer.count(answer))
        requests.append(Request(prompt, max(1, tokenizer.count(prompt)), n_out))
    return requests


def _trace_field(row: dict[str, Any], names: tuple[str, ...], where: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise WorkloadError(f"{where}: missing field {' or '.join(names)}")


def trace(
    path: Path,
    num: int | None,
    tokenizer: Tokenizer,
    seed: int,
    output_len: int | None = None,
    *,
    token_ids: bool = False,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> list[Request]:
    """Requests from a JSONL trace, one object a line: `timestamp` (s) or `timestamp_ms`,
    `prompt` (text) or `input_length` (tokens of corpus text, or random token ids if asked),
    and `output_length`."""
    maker = PromptMaker(tokenizer, np.random.default_rng(seed), vocab_size)
    rows: list[tuple[float, str | int, int]] = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{where}: not a JSON object: {exc}") from exc
        if not isinstance(row, dict):
            raise WorkloadError(f"{where}: not a JSON object")
        stamp = _trace_field(row, ("timestamp", "timestamp_ms"), where)
        prompt = _trace_field(row, ("prompt", "input_length"), where)
        n_out = output_len or _trace_field(row, ("output_length",), where)
        if not isinstance(stamp, int | float) or not isinstance(n_out, int) or n_out < 1:
            raise WorkloadError(f"{where}: timestamp must be a number, output_length >= 1")
        if not (isinstance(prompt, str) or (isinstance(prompt, int) and prompt >= 1)):
            raise WorkloadError(f"{where}: prompt must be text, input_length an int >= 1")
        if token_ids and isinstance(prompt, str):
            raise WorkloadError(f"{where}: random token ids need input_length, not prompt text")
        seconds = stamp / 1000 if "timestamp" not in row else stamp
        rows.append((float(seconds), prompt, n_out))
    if not rows:
        raise WorkloadError(f"trace {path} has no requests")
    rows.sort(key=lambda r: r[0])
    rows = rows[:num] if num else rows
    start = rows[0][0]
    requests = []
    for seconds, prompt, n_out in rows:
        if isinstance(prompt, str):
            text, n_in = prompt, max(1, tokenizer.count(prompt))
        else:
            text, n_in = (maker.token_ids(prompt) if token_ids else maker.text(prompt)), prompt
        requests.append(Request(text, n_in, n_out, seconds - start))
    return requests


def dataset_kind(path: Path) -> str:
    """`sharegpt` for a JSON array, `trace` for JSONL, told apart by the first character."""
    try:
        with path.open(encoding="utf-8") as file:
            head = file.read(4096).lstrip()[:1]
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"cannot read dataset {path}: {exc}") from exc
    if head == "[":
        return "sharegpt"
    if head == "{":
        return "trace"
    raise WorkloadError(f"dataset {path} is neither a ShareGPT JSON array nor a JSONL trace")


def load_dataset(
    path: Path,
    num: int | None,
    tokenizer: Tokenizer,
    seed: int,
    output_len: int | None = None,
    *,
    token_ids: bool = False,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> list[Request]:
    """The requests of a ShareGPT file or a JSONL trace (only a trace's lengths can be sent as
    random token ids)."""
    if dataset_kind(path) == "sharegpt":
        return sharegpt(path, num, tokenizer, seed, output_len)
    return trace(path, num, tokenizer, seed, output_len, token_ids=token_ids,
                 vocab_size=vocab_size)
