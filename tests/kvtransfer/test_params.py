"""kv_transfer_params: a JSON round trip, and clear errors for every malformed field."""

from __future__ import annotations

import json
import time

import pytest

from kvtransfer import InvalidParams, KVTransferParams

GOOD = {
    "backend": "ucx",
    "host": "10.0.0.7",
    "port": 41000,
    "lease_id": "Zm9vYmFyYmF6cXV4cXV1eDEyMzQ",
    "block_ids": [4, 5, 9],
    "num_tokens": 40,
    "fingerprint": {"model": "SmolLM2-135M-Instruct", "dtype": "bfloat16", "block_size": 16},
    "block_bytes": 368640,
    "expires_at": time.time() + 30,
}


def test_round_trip_through_json_is_lossless() -> None:
    params = KVTransferParams.from_dict(json.loads(json.dumps(GOOD)))
    assert params.to_dict() == GOOD
    assert KVTransferParams.from_dict(params.to_dict()) == params


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backend", "nccl", "backend must be one of"),
        ("host", "", "host must be"),
        ("port", 0, "port must be"),
        ("port", 70000, "port must be"),
        ("port", "41000", "port must be"),
        ("port", True, "port must be"),
        ("lease_id", "short", "lease_id must be"),
        ("lease_id", "has spaces in it, sadly!!", "lease_id must be"),
        ("block_ids", [], "non-empty list"),
        ("block_ids", [1, -2], "non-negative"),
        ("block_ids", [1, 1.5], "non-negative integers"),
        ("block_ids", [3, 3], "more than once"),
        ("block_ids", "1,2", "non-empty list"),
        ("num_tokens", 0, "num_tokens must be"),
        ("fingerprint", {}, "non-empty dict"),
        ("fingerprint", {"block_size": 16.0}, "str -> str|int"),
        ("fingerprint", {"nested": {"a": 1}}, "str -> str|int"),
        ("block_bytes", -1, "block_bytes must be"),
        ("expires_at", "soon", "expires_at must be"),
        ("expires_at", float("nan"), "expires_at must be"),
    ],
)
def test_bad_field_names_the_problem(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParams, match=message):
        KVTransferParams.from_dict({**GOOD, field: value})


def test_missing_and_unknown_fields_are_listed() -> None:
    data = {k: v for k, v in GOOD.items() if k != "port"} | {"prot": 1}
    with pytest.raises(
        InvalidParams, match=r"missing fields \['port'\] and unknown fields \['prot'\]"
    ):
        KVTransferParams.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "{}", 3])
def test_non_object_is_refused(data: object) -> None:
    with pytest.raises(InvalidParams, match="must be a JSON object"):
        KVTransferParams.from_dict(data)


def test_invalid_params_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        KVTransferParams.from_dict({})
