"""Raw step timings measured on a real engine (what `pdserve profile` records), as JSON.

File format (all times in milliseconds of wall clock for one engine step):

    {
      "model": "smollm2",            # name the planner looks the profile up by
      "dtype": "bfloat16", "device": "cpu", "tp": 1, "threads": 2,
      "kv_capacity_tokens": 200000,  # optional: the KV pool of one instance, in tokens
      "prefill": [{"prompt_lens": [128, 512], "ms": 41.7}, ...],
      "decode": [{"batch_size": 8, "context_tokens": 4096, "ms": 12.3}, ...]
    }

A prefill row is one step that prefilled whole prompts of the given lengths together; a decode
row is one step that produced a token for `batch_size` sequences holding `context_tokens` tokens
of context in total.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from planner.errors import ProfileError


@dataclass(frozen=True)
class PrefillRow:
    prompt_lens: list[int]
    ms: float

    @property
    def tokens(self) -> int:
        return sum(self.prompt_lens)

    @property
    def sq_tokens(self) -> int:
        return sum(n * n for n in self.prompt_lens)


@dataclass(frozen=True)
class DecodeRow:
    batch_size: int
    context_tokens: int
    ms: float


@dataclass
class Measurements:
    """Step timings of one model at one tensor-parallel degree on one machine."""

    model: str
    dtype: str
    device: str
    tp: int
    threads: int
    prefill: list[PrefillRow] = field(default_factory=list)
    decode: list[DecodeRow] = field(default_factory=list)
    kv_capacity_tokens: int | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        if self.kv_capacity_tokens is None:
            del data["kv_capacity_tokens"]
        return data

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @staticmethod
    def from_json(data: dict, where: str = "measurements") -> Measurements:
        try:
            measurements = Measurements(
                model=str(data["model"]),
                dtype=str(data["dtype"]),
                device=str(data["device"]),
                tp=int(data["tp"]),
                threads=int(data["threads"]),
                prefill=[PrefillRow([int(n) for n in r["prompt_lens"]], float(r["ms"]))
                         for r in data.get("prefill", [])],
                decode=[DecodeRow(int(r["batch_size"]), int(r["context_tokens"]), float(r["ms"]))
                        for r in data.get("decode", [])],
                kv_capacity_tokens=(int(data["kv_capacity_tokens"])
                                    if data.get("kv_capacity_tokens") is not None else None),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{where}: malformed measurements ({exc!r})") from exc
        for row in measurements.prefill:
            if not row.prompt_lens or min(row.prompt_lens) < 1 or row.ms <= 0:
                raise ProfileError(f"{where}: a prefill row needs prompt lengths >= 1 and ms > 0")
        for row in measurements.decode:
            if row.batch_size < 1 or row.context_tokens < row.batch_size or row.ms <= 0:
                raise ProfileError(f"{where}: a decode row needs batch_size >= 1, "
                                   "context_tokens >= batch_size and ms > 0")
        return measurements

    @staticmethod
    def load(path: Path) -> Measurements:
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise ProfileError(f"cannot read measurements {path}: {exc.strerror}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProfileError(f"measurements {path} are not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ProfileError(f"measurements {path} must be a JSON object")
        return Measurements.from_json(data, str(path))
