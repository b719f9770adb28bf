"""The measurements file `pdserve profile` writes."""

from __future__ import annotations

import json

import pytest

from planner.errors import ProfileError
from planner.measurements import DecodeRow, Measurements, PrefillRow


def test_round_trip(tmp_path):
    measurements = Measurements("smollm2", "bfloat16", "cpu", 1, 2,
                                [PrefillRow([128, 512], 41.5)], [DecodeRow(8, 4096, 12.25)])
    path = tmp_path / "m.json"
    measurements.save(path)
    assert Measurements.load(path) == measurements
    data = json.loads(path.read_text())
    assert data["prefill"][0] == {"prompt_lens": [128, 512], "ms": 41.5}
    assert data["decode"][0] == {"batch_size": 8, "context_tokens": 4096, "ms": 12.25}
    assert "kv_capacity_tokens" not in data
    assert measurements.prefill[0].tokens == 640
    assert measurements.prefill[0].sq_tokens == 128**2 + 512**2


@pytest.mark.parametrize(("data", "message"), [
    ({"model": "m"}, "malformed"),
    ({"model": "m", "dtype": "bf16", "device": "cpu", "tp": 1, "threads": 1,
      "prefill": [{"prompt_lens": [], "ms": 1}]}, "prefill row"),
    ({"model": "m", "dtype": "bf16", "device": "cpu", "tp": 1, "threads": 1,
      "decode": [{"batch_size": 4, "context_tokens": 2, "ms": 1}]}, "decode row"),
])
def test_malformed_measurements_are_refused(tmp_path, data, message):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=message):
        Measurements.load(path)
    with pytest.raises(ProfileError, match="cannot read"):
        Measurements.load(tmp_path / "absent.json")
