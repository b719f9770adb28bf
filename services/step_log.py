"""A worker's per-step timing log: one JSON line per engine step, for finding where time goes.

The Prometheus histogram (`pdserve:step_seconds`) says how steps are distributed; this file
says what each one was. Every step that did work appends
``{"end": unix seconds, "seconds": step time, "prefill_tokens": n, "decode_tokens": b,
"joined": j, "threads": t}``, where `j` of the `b` sequences are in their first decode step
(their KV just arrived, or their prompt was prefilled here) and `t` is the number of CPU threads
the step ran with (0 on a GPU; it changes from step to step with `--share-cores`).
A decode step is one with ``decode_tokens`` = its batch; a step with both is a mixed step of a
colocated worker. Written from the engine thread, line-buffered, so a killed worker keeps
every step it finished. A log that can no longer be written (a full disk) is dropped with one
warning: it never stops the engine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TextIO

from services.engine.engine import StepResult

log = logging.getLogger("pdserve.worker")


class StepLogError(Exception):
    """The step log cannot be opened."""


class StepLog:
    def __init__(self, path: str | Path):
        try:
            self._file: TextIO = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise StepLogError(f"cannot write the step log {path}: {exc.strerror}") from exc

    def write(self, result: StepResult) -> None:
        """Append one step (called on the engine thread)."""
        if self._file.closed:
            return
        line = {
            "end": round(time.time(), 6),
            "seconds": round(result.seconds, 6),
            "prefill_tokens": result.num_prefill_tokens,
            "decode_tokens": result.num_decode_tokens,
            "joined": result.num_joined,
            "threads": result.threads,
        }
        try:
            self._file.write(json.dumps(line) + "\n")
        except OSError as exc:
            log.warning("step log %s dropped: %s", self._file.name, exc.strerror or exc)
            self.close()

    def close(self) -> None:
        # The last buffered line may fail to flush; there is nothing else to lose.
        with contextlib.suppress(OSError):
            self._file.close()
