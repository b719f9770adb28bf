"""Choosing workers: filters drop the ones that cannot serve, a scorer ranks the rest.

Load reports arrive about once a second; between two reports this router adds what it has sent
itself, so a burst of requests spreads over the workers instead of piling onto the one that
looked idlest a second ago.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.registry import WorkerRecord


@dataclass
class _Sent:
    """Work this router sent to a worker that its last load report does not show yet."""

    report: float  # updated_at of the report that was current when the work was sent
    tokens: int
    blocks: int


Filter = Callable[[WorkerRecord], bool]
Scorer = Callable[[WorkerRecord], float]  # higher is better


@dataclass
class Picker:
    """Picks a prefill, decode or both-role worker for one served model."""

    model: str
    block_size: int = 16
    _sent: dict[str, list[_Sent]] = field(default_factory=dict)
    _failed: dict[str, float] = field(default_factory=dict)

    def pick(
        self,
        workers: Iterable[WorkerRecord],
        role: str,
        exclude: Iterable[str] = (),
        kv_backend: str | None = None,
    ) -> WorkerRecord | None:
        """The best live worker of `role` not in `exclude`, or None if there is none.

        With `kv_backend` (the prefill worker's, for a decode worker that will pull from it),
        workers with that backend go first: one with another backend cannot pull the KV and
        recomputes the prompt, which still serves the request, only slower.
        """
        workers = list(workers)
        self._forget_reported(workers)
        excluded = set(exclude)
        filters: list[Filter] = [
            lambda w: w.role == role,
            lambda w: w.model == self.model,
            lambda w: w.worker_id not in excluded,
            self._not_failed_since_last_report,
        ]
        candidates = [w for w in workers if all(f(w) for f in filters)]
        if not candidates:
            return None
        if kv_backend is not None:
            candidates = [w for w in candidates if w.kv_backend == kv_backend] or candidates
        score: Scorer = self.decode_score if role == "decode" else self.prefill_score
        # Ties go to the worker with less unreported work from us, then to a stable order.
        return max(
            candidates,
            key=lambda w: (score(w), -len(self._sent.get(w.worker_id, ())), w.worker_id),
        )

    def prefill_score(self, w: WorkerRecord) -> float:
        """Fewer queued prompt tokens (reported plus sent since) is better."""
        pending = sum(s.tokens for s in self._sent.get(w.worker_id, ()))
        return -float(w.load.queued_prefill_tokens + pending)

    def decode_score(self, w: WorkerRecord) -> float:
        """More free KV blocks (reported minus those our recent requests will take) is better."""
        pending = sum(s.blocks for s in self._sent.get(w.worker_id, ()))
        return float(w.load.free_blocks - pending)

    def sent(self, w: WorkerRecord, num_prompt_tokens: int) -> None:
        """Count a request sent to `w` until its next load report covers it."""
        blocks = math.ceil((num_prompt_tokens + 1) / self.block_size)
        self._sent.setdefault(w.worker_id, []).append(
            _Sent(w.updated_at, num_prompt_tokens, blocks)
        )

    def failed(self, w: WorkerRecord) -> None:
        """Avoid `w` until it reports again: a dead worker never does and soon expires."""
        self._failed[w.worker_id] = w.updated_at

    def _not_failed_since_last_report(self, w: WorkerRecord) -> bool:
        at = self._failed.get(w.worker_id)
        return at is None or w.updated_at > at

    def _forget_reported(self, workers: list[WorkerRecord]) -> None:
        latest = {w.worker_id: w.updated_at for w in workers}
        for worker_id in list(self._sent):
            report = latest.get(worker_id)
            kept = [s for s in self._sent[worker_id] if report is not None and s.report >= report]
            if kept:
                self._sent[worker_id] = kept
            else:
                del self._sent[worker_id]
        for worker_id in list(self._failed):
            if worker_id not in latest or latest[worker_id] > self._failed[worker_id]:
                del self._failed[worker_id]
