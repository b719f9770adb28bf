"""kv_transfer_params as a prefill worker hands them out: one kvtransfer lease per rank.

A prefill worker with tensor-parallel size N keeps each rank's KV heads in that rank's pool and
serves each pool from its own holder, so a finished prompt is N leases on the same block ids::

    {"backend": "tcp", "num_tokens": 37, "tp_size": 2,
     "ranks": [<rank 0's KVTransferParams.to_dict()>, <rank 1's>]}

Each rank's entry is kvtransfer's own params: where its holder listens, the lease, and the
fingerprint that names which KV heads the rank holds. Plain JSON; the router passes it through
without looking inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvtransfer import InvalidParams, KVTransferParams

FIELDS = {"backend", "num_tokens", "tp_size", "ranks"}


@dataclass(frozen=True)
class ShardedKVParams:
    """The leases of every rank of one prefill worker on one prompt's blocks."""

    ranks: list[KVTransferParams]

    @property
    def backend(self) -> str:
        return self.ranks[0].backend

    @property
    def num_tokens(self) -> int:
        return self.ranks[0].num_tokens

    @property
    def tp_size(self) -> int:
        return len(self.ranks)

    @property
    def block_ids(self) -> list[int]:
        return self.ranks[0].block_ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "num_tokens": self.num_tokens,
            "tp_size": self.tp_size,
            "ranks": [rank.to_dict() for rank in self.ranks],
        }

    @classmethod
    def from_dict(cls, data: object) -> ShardedKVParams:
        """Parse and check a dict made by ``to_dict``; InvalidParams naming the problem if bad."""
        if not isinstance(data, dict):
            raise InvalidParams(
                f"kv_transfer_params must be a JSON object, got {type(data).__name__}"
            )
        missing, unknown = sorted(FIELDS - data.keys()), sorted(data.keys() - FIELDS)
        if missing or unknown:
            raise InvalidParams(
                f"kv_transfer_params has missing fields {missing} and unknown fields {unknown}"
            )
        entries = data["ranks"]
        if not isinstance(entries, list) or not entries:
            raise InvalidParams("kv_transfer_params.ranks must be a non-empty list")
        if data["tp_size"] != len(entries):
            raise InvalidParams(
                f"kv_transfer_params has tp_size {data['tp_size']!r} but {len(entries)} ranks"
            )
        ranks = [KVTransferParams.from_dict(entry) for entry in entries]
        first = ranks[0]
        for index, rank in enumerate(ranks):
            fingerprint = rank.fingerprint
            if fingerprint.get("tp_rank") != index or fingerprint.get("tp_size") != len(ranks):
                raise InvalidParams(
                    f"kv_transfer_params.ranks[{index}] describes rank "
                    f"{fingerprint.get('tp_rank')!r} of {fingerprint.get('tp_size')!r}"
                )
            if (rank.backend, rank.num_tokens, rank.block_ids) != (
                first.backend,
                first.num_tokens,
                first.block_ids,
            ):
                raise InvalidParams(
                    f"kv_transfer_params.ranks[{index}] leases other blocks, tokens or backend "
                    "than rank 0"
                )
        if (data["backend"], data["num_tokens"]) != (first.backend, first.num_tokens):
            raise InvalidParams("kv_transfer_params disagree with their ranks' backend or tokens")
        return cls(ranks)
