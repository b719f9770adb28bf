"""Fit DistServe's latency form to measured steps, and write the planner's profile file.

Prefill step: `a + b*S + c*S2` (S: prompt tokens in the batch, S2: sum of squared lengths).
Decode step: `a + b*T + c*B` (T: context tokens in the batch, B: batch size), one fit below a
batch-size threshold and one at or above it (large batches change which kernels dominate).
Coefficients are fitted by least squares on relative error, so a 5 ms step counts as much as a
500 ms one, and kept non-negative (a negative cost per token would extrapolate to negative time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from planner.errors import ProfileError
from planner.fitted_profile import Coefficients, read_profile_file
from planner.measurements import Measurements

MIN_ROWS = 3
# A split decode fit must cut the squared error by this factor (and by more than rounding) to
# be worth its extra terms, with enough steps on each side to be more than an exact solve.
SPLIT_GAIN = 0.9
SPLIT_MIN_ROWS = 6


@dataclass(frozen=True)
class FitError:
    """Relative error of the fitted step time against the measured one, over `rows` steps."""

    mean: float
    max: float
    rows: int

    def to_json(self) -> dict:
        return {"mean_relative": self.mean, "max_relative": self.max, "rows": self.rows}


@dataclass(frozen=True)
class FitResult:
    coefficients: Coefficients
    prefill_error: FitError
    decode_error: FitError

    def summary(self) -> str:
        return (f"prefill fit: mean error {self.prefill_error.mean:.1%}, max "
                f"{self.prefill_error.max:.1%} over {self.prefill_error.rows} steps; "
                f"decode fit: mean error {self.decode_error.mean:.1%}, max "
                f"{self.decode_error.max:.1%} over {self.decode_error.rows} steps")


def _nonnegative_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative error with every coefficient >= 0 (drop the worst, refit)."""
    weights = 1.0 / y
    active = list(range(x.shape[1]))
    while True:
        solution, *_ = np.linalg.lstsq(x[:, active] * weights[:, None], y * weights, rcond=None)
        if solution.min() >= 0 or len(active) == 1:
            break
        del active[int(np.argmin(solution))]
    coefficients = np.zeros(x.shape[1])
    coefficients[active] = np.maximum(solution, 0.0)
    return coefficients


def _relative_errors(x: np.ndarray, y: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    return np.abs(x @ coefficients - y) / y


def _error(errors: np.ndarray) -> FitError:
    return FitError(float(errors.mean()), float(errors.max()), len(errors))


def _fit_decode(x: np.ndarray, y: np.ndarray, batch: np.ndarray,
                threshold: int | None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Small- and large-batch coefficients, the threshold, and each row's relative error."""
    single = _nonnegative_fit(x, y)
    single_errors = _relative_errors(x, y, single)
    candidates = [threshold] if threshold is not None else sorted(set(batch.tolist()))[1:]
    best = (float((single_errors ** 2).sum()) * SPLIT_GAIN, single, single,
            int(batch.max()) + 1, single_errors)
    for cut in candidates:
        small = batch < cut
        if small.sum() < SPLIT_MIN_ROWS or (~small).sum() < SPLIT_MIN_ROWS:
            continue
        low = _nonnegative_fit(x[small], y[small])
        high = _nonnegative_fit(x[~small], y[~small])
        errors = np.where(small, _relative_errors(x, y, low), _relative_errors(x, y, high))
        score = float((errors ** 2).sum())
        if score < best[0] - 1e-12 or threshold is not None:
            best = (score, low, high, cut, errors)
    _, low, high, cut, errors = best
    return low, high, cut, errors


def fit(measurements: Measurements, threshold: int | None = None) -> FitResult:
    """Fit the coefficients; `threshold` fixes the decode batch-size split (default: chosen;
    ignored when either side would have fewer than SPLIT_MIN_ROWS steps)."""
    if len(measurements.prefill) < MIN_ROWS or len(measurements.decode) < MIN_ROWS:
        raise ProfileError(f"need at least {MIN_ROWS} prefill and {MIN_ROWS} decode steps to "
                           f"fit, got {len(measurements.prefill)} and {len(measurements.decode)}")
    px = np.array([[1.0, r.tokens, r.sq_tokens] for r in measurements.prefill])
    py = np.array([r.ms for r in measurements.prefill])
    prefill = _nonnegative_fit(px, py)
    dx = np.array([[1.0, r.context_tokens, r.batch_size] for r in measurements.decode])
    dy = np.array([r.ms for r in measurements.decode])
    batch = np.array([r.batch_size for r in measurements.decode])
    low, high, cut, decode_errors = _fit_decode(dx, dy, batch, threshold)
    coefficients = Coefficients(
        tuple(prefill.tolist()), tuple(low.tolist()), tuple(high.tolist()), cut,  # type: ignore[arg-type]
    )
    return FitResult(coefficients, _error(_relative_errors(px, py, prefill)),
                     _error(decode_errors))


def profile_entry(measurements: Measurements, result: FitResult,
                  extra: dict | None = None) -> dict:
    """One tensor-parallel degree's entry in a profile file: coefficients plus provenance
    (and `extra` keys, such as how the decode rows were measured)."""
    entry = result.coefficients.to_json()
    if measurements.kv_capacity_tokens is not None:
        entry["kv_capacity_tokens"] = measurements.kv_capacity_tokens
    entry["source"] = "pdserve profile"
    entry["device"] = measurements.device
    entry["dtype"] = measurements.dtype
    entry["threads"] = measurements.threads
    entry["fit_error"] = {"prefill": result.prefill_error.to_json(),
                          "decode": result.decode_error.to_json()}
    entry.update(extra or {})
    return entry


def write_profile(path: Path, measurements: Measurements, result: FitResult,
                  extra: dict | None = None) -> None:
    """Add (or replace) this model and tp's entry in the profile at `path`, creating it."""
    data = read_profile_file(path) if path.exists() else {}
    data.setdefault(measurements.model, {})[str(measurements.tp)] = profile_entry(
        measurements, result, extra)
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as exc:
        raise ProfileError(f"cannot write profile {path}: {exc.strerror}") from exc
