"""The control messages a fetcher and a holder exchange, the same over every backend.

A connection carries a sequence of request/reply pairs, each a JSON object:

- ``read``: token, lease id, the fetcher's expected fingerprint and block size, the source
  runs (``[first_block, count]``), the per-block window, and whether to release the lease
  once the data is sent (so the usual pull costs one round trip). The reply is
  ``{"ok": true, "nbytes", "crc32"}`` followed by the raw bytes of each run in order, or
  ``{"ok": false, "code", "message"}`` and no data.
- ``release``: token and lease id; the reply is ``ok`` or an error.

Block bytes never pass through JSON; only these small descriptors do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kvtransfer.errors import (
    AuthError,
    InvalidParams,
    KVTransferError,
    TransferError,
    code_of,
    error_from_code,
)
from kvtransfer.params import Fingerprint, check_fingerprint

MAX_MESSAGE_BYTES = 1 << 20
"""Largest control message either side accepts; a read of 10,000 runs stays far below it."""


def encode_message(message: dict[str, Any]) -> bytes:
    """A control message as compact UTF-8 JSON."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidParams(f"control message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode_message(data: bytes | bytearray) -> dict[str, Any]:
    """Parse a control message; anything but a JSON object means the stream is corrupt."""
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransferError(f"corrupt control message from peer: {exc}") from exc
    if not isinstance(message, dict):
        raise TransferError("corrupt control message from peer: not a JSON object")
    return message


def _int(message: dict[str, Any], key: str, minimum: int) -> int:
    value = message.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidParams(f"request field {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _str(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str):
        raise InvalidParams(f"request field {key!r} must be a string, got {value!r}")
    return value


def token_of(message: dict[str, Any]) -> str:
    """The token a request presents; a request without one is refused as unauthenticated."""
    token = message.get("token")
    if not isinstance(token, str):
        raise AuthError("request carries no token")
    return token


@dataclass(frozen=True)
class ReadRequest:
    """Ask a holder for the bytes of leased blocks, run by run."""

    token: str
    lease_id: str
    fingerprint: Fingerprint
    block_bytes: int
    runs: list[tuple[int, int]]
    src_offset: int
    length: int
    checksum: bool
    release: bool

    def to_message(self) -> dict[str, Any]:
        return {
            "op": "read",
            "token": self.token,
            "lease_id": self.lease_id,
            "fingerprint": self.fingerprint,
            "block_bytes": self.block_bytes,
            "runs": [list(run) for run in self.runs],
            "src_offset": self.src_offset,
            "length": self.length,
            "checksum": self.checksum,
            "release": self.release,
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ReadRequest:
        runs = message.get("runs")
        if not isinstance(runs, list) or not runs:
            raise InvalidParams(f"request field 'runs' must be a non-empty list, got {runs!r}")
        parsed: list[tuple[int, int]] = []
        for run in runs:
            if (
                not isinstance(run, list)
                or len(run) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in run)
                or run[0] < 0
                or run[1] < 1
            ):
                raise InvalidParams(f"each run must be [first_block >= 0, count >= 1], got {run!r}")
            parsed.append((run[0], run[1]))
        checksum, release = message.get("checksum"), message.get("release")
        if not isinstance(checksum, bool) or not isinstance(release, bool):
            raise InvalidParams(
                f"request fields 'checksum' and 'release' must be booleans, got "
                f"{checksum!r} and {release!r}"
            )
        return cls(
            token=token_of(message),
            lease_id=_str(message, "lease_id"),
            fingerprint=check_fingerprint(message.get("fingerprint"), "request fingerprint"),
            block_bytes=_int(message, "block_bytes", 1),
            runs=parsed,
            src_offset=_int(message, "src_offset", 0),
            length=_int(message, "length", 1),
            checksum=checksum,
            release=release,
        )


@dataclass(frozen=True)
class ReleaseRequest:
    """Tell a holder the fetcher is done with a lease, so its blocks go back to the pool."""

    token: str
    lease_id: str

    def to_message(self) -> dict[str, Any]:
        return {"op": "release", "token": self.token, "lease_id": self.lease_id}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ReleaseRequest:
        return cls(token=token_of(message), lease_id=_str(message, "lease_id"))


def parse_request(message: dict[str, Any]) -> ReadRequest | ReleaseRequest:
    """Turn a control message into a request; unknown operations are InvalidParams."""
    op = message.get("op")
    if op == "read":
        return ReadRequest.from_message(message)
    if op == "release":
        return ReleaseRequest.from_message(message)
    raise InvalidParams(f"unknown operation {op!r}")


def ok_reply(**fields: Any) -> dict[str, Any]:
    """A successful reply with extra fields."""
    return {"ok": True, **fields}


def error_reply(error: KVTransferError) -> dict[str, Any]:
    """A refusal that the fetcher turns back into the same error class."""
    return {"ok": False, "code": code_of(error).value, "message": str(error)}


def check_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """Return a successful reply, or raise the error a refusal carries."""
    if reply.get("ok") is True:
        return reply
    code = reply.get("code")
    message = reply.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise TransferError(f"corrupt reply from holder: {reply!r}")
    raise error_from_code(code, message)
