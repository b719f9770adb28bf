"""Fitting DistServe's form to measurements and writing a profile the planner loads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from planner.errors import ProfileError
from planner.fit import fit, write_profile
from planner.fitted_profile import Coefficients, FittedTiming, load_profile
from planner.measurements import DecodeRow, Measurements, PrefillRow

TRUE = Coefficients((18.1, 0.1019, 7.1e-6), (19.9, 0.00063, 0.0385), (7.17, 0.00058, 0.158), 96)


def synthetic(coefficients: Coefficients, noise: float = 0.0, seed: int = 0,
              batches=(1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256)) -> Measurements:
    """Measurements a perfect engine with `coefficients` would produce, with relative noise."""
    timing = FittedTiming(coefficients, 1)
    rng = np.random.default_rng(seed)
    prefill = []
    for count in (1, 2, 4):
        for length in (64, 256, 1024, 2048):
            lens = [length] * count
            ms = timing.prefill_ms(sum(lens), sum(n * n for n in lens))
            prefill.append(PrefillRow(lens, ms * (1 + rng.normal(0, noise))))
    prefill.append(PrefillRow([100, 900, 3000], timing.prefill_ms(4000, 100**2 + 900**2 + 3000**2)))
    decode = [DecodeRow(b, b * ctx, timing.decode_ms(b, b * ctx) * (1 + rng.normal(0, noise)))
              for b in batches for ctx in (128, 512, 1024)]
    return Measurements("test/model", "bfloat16", "cuda", 1, 8, prefill, decode, 123456)


def test_noise_free_measurements_give_back_the_coefficients():
    result = fit(synthetic(TRUE))
    c = result.coefficients
    assert c.prefill == pytest.approx(TRUE.prefill, rel=1e-6)
    assert c.decode_small == pytest.approx(TRUE.decode_small, rel=1e-6)
    assert c.decode_large == pytest.approx(TRUE.decode_large, rel=1e-6)
    assert c.threshold == 96
    assert result.prefill_error.max < 1e-9 and result.decode_error.max < 1e-9


def test_noisy_measurements_report_their_error():
    result = fit(synthetic(TRUE, noise=0.02, seed=3))
    assert result.coefficients.prefill == pytest.approx(TRUE.prefill, rel=0.15)
    assert 0.005 < result.prefill_error.mean < 0.04
    assert result.decode_error.max < 0.1
    assert "prefill fit: mean error" in result.summary()


def test_one_regime_is_not_split():
    flat = Coefficients((5, 0.5, 0), (30, 0.001, 2.0), (30, 0.001, 2.0), 95)
    result = fit(synthetic(flat, batches=(1, 2, 4, 8, 16)))
    assert result.coefficients.decode_small == result.coefficients.decode_large
    assert result.coefficients.threshold == 17  # beyond every measured batch


def test_coefficients_stay_non_negative():
    # A cost that truly has no per-token term must not come out negative from noise.
    no_tokens = Coefficients((50, 0.0, 1e-5), (10, 0.0, 0.5), (10, 0.0, 0.5), 95)
    result = fit(synthetic(no_tokens, noise=0.03, seed=1))
    for triple in (result.coefficients.prefill, result.coefficients.decode_small,
                   result.coefficients.decode_large):
        assert min(triple) >= 0


def test_too_few_steps_is_an_error():
    measurements = synthetic(TRUE)
    measurements.decode = measurements.decode[:2]
    with pytest.raises(ProfileError, match="at least 3"):
        fit(measurements)


def test_profile_file_loads_in_the_planner_and_keeps_every_degree(tmp_path):
    path = tmp_path / "profile.json"
    one = synthetic(TRUE)
    write_profile(path, one, fit(one))
    two = synthetic(TRUE)
    two.tp = 2
    two.kv_capacity_tokens = 300000
    write_profile(path, two, fit(two))
    data = json.loads(path.read_text())
    assert set(data["test/model"]) == {"1", "2"}
    entry = data["test/model"]["1"]
    assert entry["source"] == "pdserve profile" and entry["device"] == "cuda"
    assert entry["fit_error"]["decode"]["rows"] == len(one.decode)
    model = load_profile(path, ["model"])
    assert model.kv_capacity_tokens == {1: 123456, 2: 300000}
    assert model.timing(1, 1).prefill_ms(1000, 1e6) == pytest.approx(
        FittedTiming(TRUE, 1).prefill_ms(1000, 1e6))
