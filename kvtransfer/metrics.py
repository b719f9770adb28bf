"""Plain counters a service exposes on /metrics: snapshots, so a reader never sees a torn update."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class HolderMetrics:
    """Counters of a holder since it started."""

    bytes_sent: int
    transfers: int
    failures: int
    transfer_seconds: float
    leases_granted: int
    leases_released: int
    leases_expired: int
    active_leases: int

    def as_dict(self) -> dict[str, int | float]:
        """Counter name -> value, ready for a Prometheus exporter or JSON."""
        return asdict(self)


@dataclass(frozen=True)
class FetcherMetrics:
    """Counters of a fetcher since it started."""

    bytes_received: int
    transfers: int
    failures: int
    transfer_seconds: float

    def as_dict(self) -> dict[str, int | float]:
        """Counter name -> value, ready for a Prometheus exporter or JSON."""
        return asdict(self)


@dataclass
class TransferCounters:
    """The mutable tally behind both snapshots; only touched on the event loop thread."""

    nbytes: int = 0
    transfers: int = 0
    failures: int = 0
    seconds: float = 0.0

    def record(self, nbytes: int, seconds: float) -> None:
        self.nbytes += nbytes
        self.transfers += 1
        self.seconds += seconds
