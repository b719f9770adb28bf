"""Leases: which blocks a holder keeps pinned for a peer, until released or expired.

A lease's blocks go back to the engine exactly once, through ``on_release``, when the lease is
released or expires. A lease that closes while a transfer is still reading it stays pinned
until that transfer ends, so the engine never reuses blocks that are being sent.

The table is thread-safe: the engine may grant and release from its own thread while the
holder serves reads on the event loop thread.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvtransfer.errors import InvalidParams, LeaseNotFound

log = logging.getLogger(__name__)

OnRelease = Callable[[list[int]], None]


@dataclass
class Lease:
    """One grant: its blocks, expiry (unix seconds) and how many transfers are reading it."""

    lease_id: str
    block_ids: list[int]
    expires_at: float
    readers: int = 0
    closed: bool = False


class LeaseTable:
    """All live leases of one holder, and the lease counters it reports."""

    def __init__(self, on_release: OnRelease | None):
        self._on_release = on_release
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self.granted = 0
        self.released = 0
        self.expired = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def grant(self, block_ids: list[int], num_tokens: int, ttl: float) -> Lease:
        """Pin ``block_ids`` under a new unguessable lease id for ``ttl`` seconds."""
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not ttl > 0:
            raise InvalidParams(f"lease ttl must be a positive number of seconds, got {ttl!r}")
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
            raise InvalidParams(f"num_tokens must be a positive integer, got {num_tokens!r}")
        lease = Lease(secrets.token_urlsafe(24), list(block_ids), time.time() + ttl)
        with self._lock:
            self._leases[lease.lease_id] = lease
            self.granted += 1
        return lease

    def acquire(self, lease_id: str, block_ids: list[int]) -> Lease:
        """Start a read of ``block_ids`` under ``lease_id``; pair with ``finish_read``."""
        self.expire_if_due(lease_id)
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or lease.closed:
                raise LeaseNotFound(
                    f"lease {lease_id[:8]}... is unknown, expired or already released"
                )
            outside = sorted(set(block_ids) - set(lease.block_ids))
            if outside:
                raise InvalidParams(f"blocks {outside} are not under lease {lease_id[:8]}...")
            lease.readers += 1
            return lease

    def finish_read(self, lease: Lease) -> None:
        """End a read begun by ``acquire``; hands the blocks back if the lease closed meanwhile."""
        with self._lock:
            lease.readers -= 1
            blocks = self._take_if_done(lease)
        self._give_back(blocks)

    def release(self, lease_id: str) -> bool:
        """Close a lease on request; False if it was unknown or already closed."""
        return self._close(lease_id, expired=False)

    def expire_if_due(self, lease_id: str) -> bool:
        """Close the lease if its expiry time has passed; True if this call expired it."""
        with self._lock:
            lease = self._leases.get(lease_id)
            due = lease is not None and not lease.closed and time.time() >= lease.expires_at
        return due and self._close(lease_id, expired=True)

    def seconds_left(self, lease_id: str) -> float | None:
        """Seconds until the lease expires (may be negative), or None if it is closed or unknown."""
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or lease.closed:
                return None
            return lease.expires_at - time.time()

    def close_all(self) -> None:
        """Release every lease (holder shutdown); each one's blocks still go back exactly once."""
        with self._lock:
            lease_ids = list(self._leases)
        for lease_id in lease_ids:
            self._close(lease_id, expired=False)

    def _close(self, lease_id: str, expired: bool) -> bool:
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or lease.closed:
                return False
            lease.closed = True
            if expired:
                self.expired += 1
            else:
                self.released += 1
            blocks = self._take_if_done(lease)
        self._give_back(blocks)
        return True

    def _take_if_done(self, lease: Lease) -> list[int] | None:
        # Caller holds the lock. Removing the entry is what makes the hand-back happen once.
        if lease.closed and lease.readers == 0 and self._leases.pop(lease.lease_id, None):
            return lease.block_ids
        return None

    def _give_back(self, blocks: list[int] | None) -> None:
        if blocks is None or self._on_release is None:
            return
        try:
            self._on_release(list(blocks))
        except Exception:
            # The engine's callback failing must not break the holder for other leases.
            log.exception("on_release callback failed for blocks %s", blocks)
