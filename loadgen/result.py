"""Result files: one run (configuration, summary, per-request rows) or one goodput search.

Field names and units follow `vllm bench serve` wherever the two overlap (`completed`,
`request_throughput`, `mean_ttft_ms`, ...), so results of both tools can be compared directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from loadgen.metrics import SLO, RequestRecord, Summary, summarize


class ResultError(Exception):
    """A result file cannot be read or written."""


def _number(value: float | None) -> float | str | None:
    """JSON has no infinity: an unbounded rate is written as "inf"."""
    return "inf" if value is not None and math.isinf(value) else value


def _from_number(value: Any) -> float | None:
    return math.inf if value == "inf" else value


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


@dataclass(frozen=True)
class RunConfig:
    """What was benchmarked and how the load was shaped."""

    base_url: str
    model_id: str
    endpoint: str  # completions | chat
    dataset: str  # "synthetic" or the dataset's path
    num_prompts: int
    seed: int
    request_rate: float | None = None  # None: closed loop, or a trace at its own pace
    arrival: str | None = None  # poisson | gamma | constant | trace; None for closed loop
    burstiness: float | None = None
    max_concurrency: int | None = None
    slo: SLO = field(default_factory=SLO)
    tokenizer_id: str = "approximate"
    ignore_eos: bool = True
    label: str = ""
    date: str = field(default_factory=lambda: datetime.now().astimezone().isoformat("T", "seconds"))

    def to_dict(self) -> dict[str, Any]:
        """JSON fields; `backend` names the endpoint as vLLM's benchmark does."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "slo"}
        out["backend"] = "openai-chat" if self.endpoint == "chat" else "openai"
        out["request_rate"] = _number(self.request_rate)
        out["slo_ttft_ms"] = _ms(self.slo.ttft)
        out["slo_tpot_ms"] = _ms(self.slo.tpot)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of `to_dict`."""
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        kwargs["request_rate"] = _from_number(data.get("request_rate"))
        kwargs["slo"] = SLO(_seconds(data.get("slo_ttft_ms")), _seconds(data.get("slo_tpot_ms")))
        return cls(**kwargs)


def _row(record: RequestRecord) -> dict[str, Any]:
    row = asdict(record)
    # Microseconds are finer than any latency worth reporting and keep files of long runs small.
    row["itl"] = [round(gap, 6) for gap in record.itl]
    row["tpot"] = record.tpot
    return row


def _record(row: dict[str, Any]) -> RequestRecord:
    return RequestRecord(**{f.name: row[f.name] for f in fields(RequestRecord) if f.name in row})


@dataclass
class RunResult:
    """One benchmark run."""

    config: RunConfig
    summary: Summary
    records: list[RequestRecord]

    def to_dict(self) -> dict[str, Any]:
        """Configuration and summary as flat fields, per-request rows under `requests`."""
        rows = [_row(r) for r in self.records]
        return {**self.config.to_dict(), **self.summary.to_dict(), "requests": rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Inverse of `to_dict`."""
        records = [_record(row) for row in data.get("requests", [])]
        return cls(RunConfig.from_dict(data), Summary.from_dict(data), records)


@dataclass(frozen=True)
class GoodputPoint:
    """One full run of a goodput search."""

    request_rate: float
    passed: bool
    summary: Summary

    @property
    def slo_attainment(self) -> float:
        """Share of the run's requests that met the SLO."""
        return self.summary.slo_attainment or 0.0

    def to_dict(self) -> dict[str, Any]:
        """The rate and its verdict next to the run's summary fields."""
        return {"request_rate": self.request_rate, "passed": self.passed,
                **self.summary.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GoodputPoint:
        """Inverse of `to_dict`."""
        return cls(data["request_rate"], data["passed"], Summary.from_dict(data))


@dataclass
class GoodputResult:
    """The highest request rate whose runs met the SLO attainment target."""

    config: RunConfig
    attainment_target: float
    goodput: float  # requests/s
    points: list[GoodputPoint]
    gpus: int | None = None
    note: str = ""  # set when the search hit a bound instead of bracketing the answer

    @property
    def goodput_per_gpu(self) -> float | None:
        """Goodput divided by the GPU count, when it was given."""
        return self.goodput / self.gpus if self.gpus else None

    def to_dict(self) -> dict[str, Any]:
        """The answer, the search's settings, and every point tried."""
        config = self.config.to_dict()
        config.pop("request_rate")
        return {
            **config,
            "goodput": self.goodput,
            "goodput_per_gpu": self.goodput_per_gpu,
            "gpus": self.gpus,
            "attainment_target": self.attainment_target,
            "note": self.note,
            "points": [p.to_dict() for p in self.points],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GoodputResult:
        """Inverse of `to_dict`."""
        return cls(
            RunConfig.from_dict(data),
            data["attainment_target"],
            data["goodput"],
            [GoodputPoint.from_dict(p) for p in data["points"]],
            data.get("gpus"),
            data.get("note", ""),
        )


def from_vllm(data: dict[str, Any]) -> RunResult:
    """A result of `vllm bench serve --save-result --save-detailed` (per-request arrays
    `ttfts`, `itls`, `input_lens`, `output_lens`, `errors`) as a run, to plot beside ours."""
    ttfts = data["ttfts"]
    errors = data.get("errors") or [""] * len(ttfts)
    e2els = data.get("e2els") or [None] * len(ttfts)
    records = []
    rows = zip(ttfts, data["itls"], data["input_lens"], data["output_lens"], errors, e2els,
               strict=True)
    for ttft, itl, n_in, n_out, error, e2el in rows:
        ok = not error
        latency = e2el if e2el is not None else ttft + sum(itl)
        records.append(RequestRecord(
            send_time=0.0, prompt_len=n_in, output_len=n_out, requested_output_len=n_out,
            ttft=ttft if ok else None, itl=list(itl) if ok else [],
            latency=latency if ok else None, success=ok, error=error or "",
        ))
    config = RunConfig(
        base_url=data.get("base_url") or "",
        model_id=data.get("model_id") or "",
        endpoint="chat" if data.get("backend") == "openai-chat" else "completions",
        dataset=data.get("dataset_name") or "",
        num_prompts=data.get("num_prompts") or len(records),
        seed=data.get("seed") or 0,
        request_rate=_from_number(data.get("request_rate")),
        max_concurrency=data.get("max_concurrency"),
        tokenizer_id=data.get("tokenizer_id") or "",
        label=data.get("label") or "vllm",
        date=data.get("date") or "",
    )
    return RunResult(config, summarize(records, data["duration"], SLO()), records)


def write_result(result: RunResult | GoodputResult, path: Path) -> None:
    """Write `result` as JSON (strict: no NaN or infinity)."""
    try:
        text = json.dumps(result.to_dict(), indent=1, allow_nan=False)
        path.write_text(text + "\n", encoding="utf-8")
    except OSError as exc:
        raise ResultError(f"cannot write result to {path}: {exc}") from exc


def read_result(path: Path) -> RunResult | GoodputResult:
    """A run or goodput result written by `write_result` (told apart by `points`), or a
    detailed result of `vllm bench serve`."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultError(f"cannot read result {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ResultError(f"result {path} is not valid JSON: {exc}") from exc
    try:
        if "points" in data:
            return GoodputResult.from_dict(data)
        if "completed" in data and "requests" not in data and "ttfts" in data:
            return from_vllm(data)
        if "completed" in data:
            return RunResult.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultError(f"result {path} is malformed: {exc}") from exc
    raise ResultError(f"{path} is not a result of `pdserve bench run` or `goodput`")
