"""Loading DistServe-form coefficients and timing steps with them."""

from __future__ import annotations

import json

import pytest

from planner.errors import ProfileError
from planner.fitted_profile import (
    BUNDLED_PROFILE,
    Coefficients,
    FittedTiming,
    bundled_data_path,
    load_profile,
)

PROFILE = bundled_data_path(BUNDLED_PROFILE)


def test_bundled_profile_ships_inside_the_package():
    assert PROFILE.is_file()
    assert PROFILE.parent.name == "data" and PROFILE.parent.parent.name == "planner"


def test_prefill_and_decode_follow_distserves_formulas():
    model = load_profile(PROFILE, ["facebook/opt-13b"])
    timing = model.timing(1, 1)
    a, b, c = 18.10254647486372, 0.1019122572698738, 7.122264314252114e-06
    assert timing.prefill_ms(1000, 1000**2) == pytest.approx(a + b * 1000 + c * 1e6)
    small = (19.934702624895458, 0.0006269356524350583, 0.03850697740828398)
    large = (7.1661889468253595, 0.0005798000403396046, 0.15831096191764046)
    assert timing.decode_ms(10, 9000) == pytest.approx(small[0] + small[1] * 9000 + small[2] * 10)
    assert timing.decode_ms(100, 90000) == pytest.approx(
        large[0] + large[1] * 90000 + large[2] * 100)


def test_pipeline_stages_split_the_decode_batch():
    coefficients = Coefficients((10, 0.1, 0), (20, 0.001, 0.05), (20, 0.001, 0.05), 95)
    one, two = FittedTiming(coefficients, 1), FittedTiming(coefficients, 2)
    # Two stages: each micro-batch carries half the batch, plus a 1 ms hop.
    assert two.decode_ms(64, 64000) == pytest.approx(20 + (64 + 3.2) / 2 + 1)
    assert two.decode_ms(64, 64000) < one.decode_ms(64, 64000)
    assert two.prefill_ms(1000, 0) == pytest.approx(one.prefill_ms(1000, 0) + 1)


def test_model_names_match_short_and_long_forms():
    assert load_profile(PROFILE, ["opt-66b"]).coefficients.keys() == {2, 3, 4, 8}


def test_unsupported_tp_says_which_exist():
    model = load_profile(PROFILE, ["facebook/opt-13b"])
    assert model.unsupported(4, 1) is None
    assert "tp 1, 2, 4" in model.unsupported(8, 1)


def test_missing_model_and_malformed_files_are_clear(tmp_path):
    with pytest.raises(ProfileError, match="no entry for meta-llama"):
        load_profile(PROFILE, ["meta-llama/Llama-3.1-8B"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"m": {"1": {"prefill": [1, 2]}}}))
    with pytest.raises(ProfileError, match="malformed"):
        load_profile(bad, ["m"])
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "absent.json", ["m"])
