"""Latency from coefficients fitted to measurements, in DistServe's form (see data/README.md).

A profile file maps model name -> tensor-parallel degree (string) -> coefficients. Besides the
coefficients a degree's entry may carry extra keys; `kv_capacity_tokens` (one instance's KV cache
in tokens) is used by the memory model, the others are kept for people.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from planner.errors import ProfileError

BUNDLED_PROFILE = "distserve-a100-80g-profile.json"
# Sending activations from one pipeline stage to the next; DistServe's simulator notes about
# 1 ms per stage on A100s.
STAGE_HOP_MS = 1.0


def bundled_data_path(filename: str) -> Path:
    """Path of a data file shipped inside the planner package (planner/data/)."""
    return Path(__file__).resolve().parent / "data" / filename


@dataclass(frozen=True)
class Coefficients:
    """One tensor-parallel degree's fitted step times (ms): `a + b*x + c*y` triples."""

    prefill: tuple[float, float, float]  # a + b*S + c*S2
    decode_small: tuple[float, float, float]  # a + b*T + c*B, for B below the threshold
    decode_large: tuple[float, float, float]  # ... at or above it
    threshold: int

    def to_json(self) -> dict:
        return {
            "decoding_large_small_bs_threshold": self.threshold,
            "prefill": list(self.prefill),
            "decoding_smallbs": list(self.decode_small),
            "decoding_largebs": list(self.decode_large),
        }

    @staticmethod
    def from_json(entry: dict, where: str) -> Coefficients:
        try:
            triples = [
                tuple(float(x) for x in entry[key])
                for key in ("prefill", "decoding_smallbs", "decoding_largebs")
            ]
            threshold = int(entry["decoding_large_small_bs_threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{where}: missing or malformed coefficient {exc}") from exc
        if any(len(t) != 3 for t in triples):
            raise ProfileError(f"{where}: each coefficient list must hold three numbers")
        prefill, small, large = triples
        return Coefficients(prefill, small, large, threshold)  # type: ignore[arg-type]


class FittedTiming:
    """Step times of one (tp, pp) instance from its tensor-parallel degree's coefficients."""

    def __init__(self, coefficients: Coefficients, pp: int) -> None:
        self.a, self.b, self.c = coefficients.prefill
        self.small = coefficients.decode_small
        self.large = coefficients.decode_large
        self.threshold = coefficients.threshold
        self.pp = pp
        self.hops_ms = (pp - 1) * STAGE_HOP_MS

    def prefill_ms(self, tokens: float, sq_tokens: float) -> float:
        return self.a + self.b * tokens + self.c * sq_tokens + self.hops_ms

    def decode_ms(self, batch: int, context_tokens: float) -> float:
        # Each of the pp micro-batches holds batch/pp sequences; the round is one pass of the
        # whole model per micro-batch, spread over the stages.
        micro = math.ceil(batch / self.pp)
        a, b, c = self.small if micro < self.threshold else self.large
        return a + (b * context_tokens + c * batch) / self.pp + self.hops_ms


class ProfileLatencyModel:
    """Latency from a profile file's coefficients for one model."""

    def __init__(self, coefficients: dict[int, Coefficients], source: str,
                 kv_capacity_tokens: dict[int, int] | None = None) -> None:
        self.coefficients = coefficients
        self.source = source
        self.kv_capacity_tokens = kv_capacity_tokens or {}
        self.name = f"profile {source}"

    def unsupported(self, tp: int, pp: int) -> str | None:
        if tp in self.coefficients:
            return None
        have = ", ".join(str(t) for t in sorted(self.coefficients))
        return f"the latency profile has no coefficients for tp={tp} (it has tp {have})"

    def timing(self, tp: int, pp: int) -> FittedTiming:
        return FittedTiming(self.coefficients[tp], pp)

    def describe(self) -> dict:
        return {
            "kind": "profile",
            "source": self.source,
            "coefficients": {str(tp): c.to_json() for tp, c in self.coefficients.items()},
            "kv_capacity_tokens": {str(tp): n for tp, n in self.kv_capacity_tokens.items()},
        }

    @staticmethod
    def from_description(description: dict) -> ProfileLatencyModel:
        return ProfileLatencyModel(
            {int(tp): Coefficients.from_json(e, tp) for tp, e in
             description["coefficients"].items()},
            description["source"],
            {int(tp): int(n) for tp, n in description["kv_capacity_tokens"].items()},
        )


def read_profile_file(path: Path) -> dict:
    """Parse a profile file; every top-level key is a model name."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"cannot read latency profile {path}: {exc.strerror}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"latency profile {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ProfileError(f"latency profile {path} must map model -> tp -> coefficients")
    return data


def _find_model_entry(data: dict, names: list[str]) -> tuple[str, dict] | None:
    wanted = {n.lower() for n in names if n}
    wanted |= {n.split("/")[-1] for n in wanted}
    for key, entry in data.items():
        if key.lower() in wanted or key.lower().split("/")[-1] in wanted:
            return key, entry
    return None


def load_profile(path: Path, model_names: list[str]) -> ProfileLatencyModel:
    """The coefficients for the first of `model_names` that the profile at `path` holds."""
    data = read_profile_file(path)
    found = _find_model_entry(data, model_names)
    if found is None:
        have = ", ".join(sorted(data)) or "no models"
        raise ProfileError(
            f"latency profile {path} has no entry for {model_names[0]} (it has {have})"
        )
    key, entry = found
    coefficients: dict[int, Coefficients] = {}
    capacity: dict[int, int] = {}
    for tp_key, tp_entry in entry.items():
        if not str(tp_key).isdigit() or not isinstance(tp_entry, dict):
            raise ProfileError(f"{path}: {key} -> {tp_key!r} is not a tensor-parallel degree")
        coefficients[int(tp_key)] = Coefficients.from_json(tp_entry, f"{path}: {key} tp={tp_key}")
        if "kv_capacity_tokens" in tp_entry:
            capacity[int(tp_key)] = int(tp_entry["kv_capacity_tokens"])
    if not coefficients:
        raise ProfileError(f"latency profile {path} has no coefficients for {key}")
    return ProfileLatencyModel(coefficients, str(path), capacity)


def profile_has_model(path: Path, model_names: list[str]) -> bool:
    """Whether the profile at `path` holds coefficients for any of `model_names`."""
    return _find_model_entry(read_profile_file(path), model_names) is not None
