"""What a worker publishes about itself: who it is, where to reach it, and how loaded it is.

The JSON form is the contract between workers and the router (key ``pdserve:worker:<id>``);
``from_json`` checks every field, because the record comes out of a shared store.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from services.registry.errors import RegistryError

KEY_PREFIX = "pdserve:worker:"
ROLES = ("prefill", "decode", "both")


@dataclass(frozen=True)
class WorkerLoad:
    """A worker's load at its last heartbeat, from the engine's stats."""

    queued_prefill_tokens: int = 0
    num_running: int = 0
    num_waiting: int = 0
    free_blocks: int = 0
    total_blocks: int = 0

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0.0 to 1.0."""
        return 1.0 - self.free_blocks / self.total_blocks if self.total_blocks else 0.0


@dataclass(frozen=True)
class WorkerRecord:
    """One live worker as the registry lists it."""

    worker_id: str
    role: str  # prefill | decode | both
    url: str  # http://HOST:PORT of the worker's HTTP API
    model: str  # served model name
    tp_size: int
    kv_backend: str
    started_at: float  # unix seconds
    load: WorkerLoad
    updated_at: float  # unix seconds of the heartbeat that wrote this record

    @property
    def key(self) -> str:
        """The Redis key this record lives under."""
        return KEY_PREFIX + self.worker_id

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerRecord:
        """Parse a record written by ``to_json``; RegistryError names what is wrong."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(f"worker record is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise RegistryError(f"worker record must be a JSON object, got {type(data).__name__}")
        load = data.get("load")
        if not isinstance(load, dict):
            raise RegistryError("worker record lacks its 'load' object")
        fields_ = {f.name: _field(load, f.name, int) for f in fields(WorkerLoad)}
        record = cls(
            worker_id=_field(data, "worker_id", str),
            role=_field(data, "role", str),
            url=_field(data, "url", str),
            model=_field(data, "model", str),
            tp_size=_field(data, "tp_size", int),
            kv_backend=_field(data, "kv_backend", str),
            started_at=float(_field(data, "started_at", (int, float))),
            load=WorkerLoad(**fields_),
            updated_at=float(_field(data, "updated_at", (int, float))),
        )
        if record.role not in ROLES:
            raise RegistryError(f"worker record has unknown role {record.role!r}")
        return record


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RegistryError(f"worker record field {name!r} is missing or mistyped: {value!r}")
    return value
