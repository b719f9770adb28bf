"""kv_transfer_params: what a prefill worker hands out so a decode worker can pull its KV blocks.

The dict form (``to_dict``) is plain JSON; ``from_dict`` is the only way back and checks every
field's type and range, because the dict arrives over HTTP from another process.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from kvtransfer.errors import InvalidParams

BACKENDS = ("ucx", "tcp")

Fingerprint = dict[str, str | int]
"""Layout facts both sides must agree on (model, dtype, block_size, ...); compared as a whole."""

_LEASE_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_MAX_HOST_LEN = 253


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fingerprint(fingerprint: object, what: str = "fingerprint") -> Fingerprint:
    """Return ``fingerprint`` if it is a non-empty dict of str -> str|int, else raise."""
    if not isinstance(fingerprint, dict) or not fingerprint:
        raise InvalidParams(f"{what} must be a non-empty dict, got {fingerprint!r}")
    for key, value in fingerprint.items():
        if not isinstance(key, str) or not (isinstance(value, str) or _is_int(value)):
            raise InvalidParams(f"{what} entries must be str -> str|int, got {key!r}: {value!r}")
    return fingerprint


def fingerprint_difference(fetcher: Fingerprint, holder: Fingerprint) -> str:
    """The keys on which two layouts disagree, worded so an operator sees which side has what."""
    return ", ".join(
        f"{key}: fetcher expects {fetcher.get(key)!r}, holder has {holder.get(key)!r}"
        for key in sorted(set(fetcher) | set(holder))
        if fetcher.get(key) != holder.get(key)
    )


def check_block_ids(block_ids: object, what: str, num_blocks: int | None = None) -> list[int]:
    """Return ``block_ids`` as a list if it is a non-empty list of distinct ids in range."""
    if not isinstance(block_ids, list | tuple) or not block_ids:
        raise InvalidParams(f"{what} must be a non-empty list of block ids, got {block_ids!r}")
    for block_id in block_ids:
        if not _is_int(block_id) or block_id < 0:
            raise InvalidParams(f"{what} must hold non-negative integers, got {block_id!r}")
        if num_blocks is not None and block_id >= num_blocks:
            raise InvalidParams(
                f"{what} holds block {block_id}, outside the pool of {num_blocks} blocks"
            )
    if len(set(block_ids)) != len(block_ids):
        raise InvalidParams(f"{what} holds a block id more than once: {list(block_ids)}")
    return list(block_ids)


@dataclass(frozen=True)
class KVTransferParams:
    """Where a request's KV blocks are held and the lease that lets a peer read them."""

    backend: str
    host: str
    port: int
    lease_id: str
    block_ids: list[int]
    num_tokens: int
    fingerprint: Fingerprint
    block_bytes: int
    expires_at: float

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InvalidParams(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.host, str) or not 0 < len(self.host) <= _MAX_HOST_LEN:
            raise InvalidParams(f"host must be a non-empty host name or address, got {self.host!r}")
        if not _is_int(self.port) or not 0 < self.port < 65536:
            raise InvalidParams(f"port must be an integer in 1..65535, got {self.port!r}")
        if not isinstance(self.lease_id, str) or not _LEASE_ID.match(self.lease_id):
            raise InvalidParams(
                f"lease_id must be 16-128 URL-safe characters, got {self.lease_id!r}"
            )
        object.__setattr__(self, "block_ids", check_block_ids(self.block_ids, "block_ids"))
        if not _is_int(self.num_tokens) or self.num_tokens < 1:
            raise InvalidParams(f"num_tokens must be a positive integer, got {self.num_tokens!r}")
        object.__setattr__(self, "fingerprint", dict(check_fingerprint(self.fingerprint)))
        if not _is_int(self.block_bytes) or self.block_bytes < 1:
            raise InvalidParams(f"block_bytes must be a positive integer, got {self.block_bytes!r}")
        if (
            not isinstance(self.expires_at, int | float)
            or isinstance(self.expires_at, bool)
            or not math.isfinite(self.expires_at)
            or self.expires_at <= 0
        ):
            raise InvalidParams(f"expires_at must be unix seconds, got {self.expires_at!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serializable form that travels between services."""
        return {
            "backend": self.backend,
            "host": self.host,
            "port": self.port,
            "lease_id": self.lease_id,
            "block_ids": list(self.block_ids),
            "num_tokens": self.num_tokens,
            "fingerprint": dict(self.fingerprint),
            "block_bytes": self.block_bytes,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_dict(cls, data: object) -> KVTransferParams:
        """Parse and validate a dict made by ``to_dict``; raise InvalidParams naming the problem."""
        if not isinstance(data, dict):
            raise InvalidParams(
                f"kv_transfer_params must be a JSON object, got {type(data).__name__}"
            )
        expected = {f.name for f in fields(cls)}
        missing = sorted(expected - data.keys())
        unknown = sorted(set(data.keys()) - expected)
        if missing or unknown:
            raise InvalidParams(
                f"kv_transfer_params has missing fields {missing} and unknown fields {unknown}"
            )
        return cls(**data)
