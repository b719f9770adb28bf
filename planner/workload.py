"""Request lengths (and, for traces, arrival pattern) in the load generator's workload formats.

`--workload` accepts:

- `synthetic:in=MEAN,out=MEAN[,dist=lognormal|fixed][,cv=C][,in_cv=C][,out_cv=C]`: prompt and
  output lengths in tokens. `fixed` uses the means as they are; `lognormal` (the default) draws
  lengths whose mean is MEAN and whose coefficient of variation (std/mean) is `cv` (default 0.5,
  or `in_cv`/`out_cv` for one side). DistServe's ShareGPT chatbot set averages 755 prompt and 187
  output tokens with CVs near 0.7 and 1.2: `synthetic:in=755,out=187,in_cv=0.7,out_cv=1.2`.
- a ShareGPT-format JSON file: a list of `{"conversations": [{"from": "human", "value": ...},
  {"from": "gpt", "value": ...}, ...]}`. The first human turn is the prompt and the answer that
  follows it gives the output length. Tokens are counted with `--tokenizer tokenizer.json` when
  given, else approximated as characters / 4 (English text under GPT-style BPE).
- a JSONL trace in the load generator's format, one request per line: `{"timestamp": SECONDS,
  "input_length": N, "output_length": N}` (`timestamp_ms` for milliseconds, `prompt` text instead
  of `input_length`, and `input_len`/`output_len` are accepted too). The trace's relative arrival
  times are replayed, stretched or compressed to the rate asked for: the same file drives
  `pdserve bench run --dataset` and the planner.

Requests longer than the model's context (prompt + output) are dropped from datasets and redrawn
for synthetic specs, as DistServe's preprocessing does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.errors import WorkloadError

CHARS_PER_TOKEN = 4
DEFAULT_CV = 0.5


@dataclass(frozen=True)
class RequestSample:
    """`n` requests: lengths in tokens and, for traces, arrival gaps at a mean rate of 1/s."""

    prompt_lens: list[int]
    output_lens: list[int]
    unit_gaps: list[float] | None  # None: the caller draws Poisson/Gamma arrivals

    def __len__(self) -> int:
        return len(self.prompt_lens)


@dataclass(frozen=True)
class Workload:
    """A parsed `--workload`: either synthetic parameters or a pool of dataset requests."""

    description: str
    dist: str = "fixed"  # synthetic only: "fixed" or "lognormal"
    mean_in: float = 0.0
    mean_out: float = 0.0
    in_cv: float = DEFAULT_CV
    out_cv: float = DEFAULT_CV
    pool: tuple[tuple[int, int], ...] = ()  # dataset requests (prompt, output)
    timestamps: tuple[float, ...] = ()  # trace arrival times, seconds, sorted

    @property
    def is_trace(self) -> bool:
        return bool(self.timestamps)

    @property
    def trace_rate(self) -> float:
        """A trace's own mean rate, requests/s: n - 1 gaps between its first and last arrival
        (how the load generator rescales a trace to --rate too)."""
        return 1.0 / _mean_gap(list(self.timestamps))

    def sample(self, n: int, seed: int, max_context: int) -> RequestSample:
        """Draw `n` requests that fit `max_context` tokens, reproducibly for a seed."""
        rng = np.random.default_rng(seed)
        if not self.pool:
            prompts, outputs = self._draw_synthetic(rng, n, max_context)
            return RequestSample(prompts, outputs, None)
        fits = [i for i, (p, o) in enumerate(self.pool) if p + o <= max_context]
        if not fits:
            raise WorkloadError(
                f"{self.description}: no request fits the model's {max_context}-token context"
            )
        if self.is_trace:
            # Replay in order, repeating the trace when more requests are asked for.
            picks = [fits[i % len(fits)] for i in range(n)]
            return RequestSample(
                [self.pool[i][0] for i in picks],
                [self.pool[i][1] for i in picks],
                self._unit_gaps(picks, len(fits)),
            )
        picks = rng.choice(len(fits), size=n, replace=n > len(fits))
        return RequestSample(
            [self.pool[fits[i]][0] for i in picks], [self.pool[fits[i]][1] for i in picks], None
        )

    def _unit_gaps(self, picks: list[int], distinct: int) -> list[float]:
        times = [self.timestamps[i] for i in picks[:distinct]]
        gaps = [0.0] + [b - a for a, b in zip(times, times[1:], strict=False)]
        mean_gap = _mean_gap(times)
        gaps = [g / mean_gap for g in gaps]
        # A repeated trace restarts one mean gap after its last request.
        return [gaps[i % distinct] if i % distinct else (1.0 if i else 0.0)
                for i in range(len(picks))]

    def _draw_synthetic(self, rng: np.random.Generator, n: int,
                        max_context: int) -> tuple[list[int], list[int]]:
        if self.mean_in + self.mean_out > max_context and self.dist == "fixed":
            raise WorkloadError(
                f"{self.description}: {self.mean_in:.0f} + {self.mean_out:.0f} tokens exceed the "
                f"model's {max_context}-token context"
            )
        prompts = np.empty(0, dtype=np.int64)
        outputs = np.empty(0, dtype=np.int64)
        for _ in range(50):
            p = self._draw_lengths(rng, self.mean_in, self.in_cv, 2 * n)
            o = self._draw_lengths(rng, self.mean_out, self.out_cv, 2 * n)
            keep = p + o <= max_context
            prompts = np.concatenate([prompts, p[keep]])
            outputs = np.concatenate([outputs, o[keep]])
            if len(prompts) >= n:
                return prompts[:n].tolist(), outputs[:n].tolist()
        raise WorkloadError(
            f"{self.description}: too few drawn requests fit the model's {max_context}-token "
            "context; lower the means or the spread"
        )

    def _draw_lengths(self, rng: np.random.Generator, mean: float, cv: float,
                      n: int) -> np.ndarray:
        if self.dist == "fixed" or cv == 0:
            return np.full(n, max(1, round(mean)), dtype=np.int64)
        sigma = math.sqrt(math.log1p(cv * cv))
        mu = math.log(mean) - sigma * sigma / 2
        return np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(np.int64)


def _mean_gap(times: list[float]) -> float:
    """Mean gap between sorted arrival times, seconds (1 when there is no span to measure)."""
    span = times[-1] - times[0] if times else 0.0
    return span / (len(times) - 1) if len(times) > 1 and span > 0 else 1.0


def _parse_synthetic(spec: str) -> Workload:
    body = spec.split(":", 1)[1]
    fields: dict[str, str] = {}
    for part in filter(None, body.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise WorkloadError(f"bad synthetic workload field {part!r}: expected key=value")
        fields[key.strip()] = value.strip()
    allowed = {"in", "out", "dist", "cv", "in_cv", "out_cv"}
    unknown = set(fields) - allowed
    if unknown:
        raise WorkloadError(f"unknown synthetic workload field(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(allowed))}")
    if "in" not in fields or "out" not in fields:
        raise WorkloadError("a synthetic workload needs in=MEAN and out=MEAN, "
                            "e.g. synthetic:in=755,out=187")
    dist = fields.get("dist", "lognormal")
    if dist not in ("lognormal", "fixed"):
        raise WorkloadError(f"unknown length distribution {dist!r}; use lognormal or fixed")
    try:
        mean_in, mean_out = float(fields["in"]), float(fields["out"])
        cv = float(fields.get("cv", DEFAULT_CV))
        in_cv = float(fields.get("in_cv", cv))
        out_cv = float(fields.get("out_cv", cv))
    except ValueError as exc:
        raise WorkloadError(f"synthetic workload: {exc}") from exc
    if mean_in < 1 or mean_out < 1:
        raise WorkloadError("synthetic workload means must be at least 1 token")
    if in_cv < 0 or out_cv < 0:
        raise WorkloadError("synthetic workload cv must not be negative")
    return Workload(description=spec, dist=dist, mean_in=mean_in, mean_out=mean_out,
                    in_cv=in_cv, out_cv=out_cv)


def _token_counter(tokenizer_path: str | None):
    if tokenizer_path is None:
        return lambda texts: [max(1, round(len(t) / CHARS_PER_TOKEN)) for t in texts]
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(tokenizer_path)
    except Exception as exc:  # tokenizers raises its own untyped errors
        raise WorkloadError(f"cannot load tokenizer {tokenizer_path}: {exc}") from exc
    return lambda texts: [max(1, len(e.ids)) for e in tokenizer.encode_batch(texts)]


def _parse_sharegpt(path: Path, data: object, tokenizer_path: str | None) -> Workload:
    if not isinstance(data, list):
        raise WorkloadError(f"{path}: a ShareGPT file is a JSON list of conversations")
    prompts: list[str] = []
    answers: list[str] = []
    for item in data:
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list):
            continue
        for i, turn in enumerate(turns[:-1]):
            nxt = turns[i + 1]
            if (isinstance(turn, dict) and turn.get("from") in ("human", "user")
                    and isinstance(nxt, dict) and nxt.get("from") in ("gpt", "assistant")):
                prompts.append(str(turn.get("value", "")))
                answers.append(str(nxt.get("value", "")))
                break
    if not prompts:
        raise WorkloadError(f"{path}: no conversation has a human turn followed by a gpt answer")
    count = _token_counter(tokenizer_path)
    pool = tuple(zip(count(prompts), count(answers), strict=True))
    return Workload(description=str(path), pool=pool)


def _trace_value(row: dict, names: tuple[str, ...]) -> object:
    for name in names:
        if name in row:
            return row[name]
    raise KeyError(" or ".join(names))


def _parse_trace(path: Path, text: str, tokenizer_path: str | None) -> Workload:
    """The load generator's trace format; `input_len`/`output_len` are accepted as well."""
    rows: list[tuple[float, int | str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise TypeError("not a JSON object")
            seconds = float(_trace_value(row, ("timestamp", "timestamp_ms")))
            if "timestamp" not in row:
                seconds /= 1000
            prompt = _trace_value(row, ("input_length", "input_len", "prompt"))
            prompt = prompt if isinstance(prompt, str) else int(prompt)
            output = int(_trace_value(row, ("output_length", "output_len")))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(
                f"{path}:{number}: expected {{\"timestamp\" (or \"timestamp_ms\"), "
                f"\"input_length\" (or \"prompt\"), \"output_length\"}} ({exc})"
            ) from exc
        if (isinstance(prompt, int) and prompt < 1) or output < 1:
            raise WorkloadError(f"{path}:{number}: lengths must be at least 1")
        rows.append((seconds, prompt, output))
    if not rows:
        raise WorkloadError(f"{path}: the trace is empty")
    rows.sort(key=lambda r: r[0])
    texts = [p for _, p, _ in rows if isinstance(p, str)]
    counted = iter(_token_counter(tokenizer_path)(texts) if texts else [])
    prompts = [p if isinstance(p, int) else next(counted) for _, p, _ in rows]
    return Workload(description=str(path),
                    pool=tuple(zip(prompts, (o for _, _, o in rows), strict=True)),
                    timestamps=tuple(t for t, _, _ in rows))


def load_workload(spec: str, tokenizer_path: str | None = None) -> Workload:
    """Parse a `--workload` value: a synthetic spec, a ShareGPT JSON file or a JSONL trace."""
    if spec.startswith("synthetic:"):
        return _parse_synthetic(spec)
    path = Path(spec)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise WorkloadError(
            f"workload {spec!r} is not a file and not synthetic:in=MEAN,out=MEAN"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkloadError(f"cannot read workload {path}: {exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}: not valid JSON: {exc}") from exc
        return _parse_sharegpt(path, data, tokenizer_path)
    if stripped.startswith("{"):
        return _parse_trace(path, text, tokenizer_path)
    raise WorkloadError(f"{path}: neither a ShareGPT JSON list nor a JSONL trace")
