"""A prefill and a decode worker on the same host, lending each other their cores.

On a host with few cores (a CPU box, or any machine where the two phases share a socket), a
one-prefill, one-decode pair splits the cores, and each side idles whenever it has nothing to do.
Prefill is bursty; decode runs step after step. With `--share-cores PATH` on both workers:

- the prefill worker takes its own cores for every step it computes, waiting at most for the
  decode worker's current step to end;
- the decode worker, before each step, takes them too if the prefill worker neither holds nor
  waits for them, and then runs that step with its own threads plus the prefill worker's;
- when prompts queue behind the one it is about to compute, the prefill worker takes the decode
  worker's cores as well (a "wide" step): decoding pauses for that step, and the queue, which is
  what stretches time to first token, drains at the speed of all the cores.

Each claim is an exclusive `flock`, on PATH for the prefill worker's cores and on PATH.decode for
the decode worker's, so it dies with the process that held it. Two bytes mapped from PATH say
that the prefill worker waits for its cores (the decode worker then leaves them alone between
its steps instead of racing for them) and that it is taking the decode worker's (the decode
worker then waits for that step to end). Thread counts change only between steps, so the two
workers never run more threads than there are cores. A change costs the step after it about
a millisecond on the development machine (`bench/thread_switch_cost.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Callable, Iterator

LENDER, BORROWER = "prefill", "decode"
_WAITING = 0  # the prefill worker waits for its own cores
_WIDE = 1  # the prefill worker takes (or holds) the decode worker's cores too


class SharedCoresError(Exception):
    """The shared-cores file cannot be opened, or the worker's role cannot share cores."""


class SharedCores:
    """One worker's side of a prefill and a decode worker's claims on each other's cores."""

    def __init__(
        self, path: str, role: str, threads: int, lent_threads: int,
        set_threads: Callable[[int], None],
    ) -> None:  # fmt: skip
        if role not in (LENDER, BORROWER):
            raise SharedCoresError(
                f"--share-cores pairs a prefill worker with a decode worker; a {role} worker "
                "cannot share its cores"
            )
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # the prefill worker's cores
            self._decode_fd = os.open(f"{path}.decode", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SharedCoresError(
                f"cannot open the shared-cores file {path}: {exc.strerror}"
            ) from exc
        if os.fstat(self._fd).st_size < 2:
            os.ftruncate(self._fd, 2)
        self._flags = mmap.mmap(self._fd, 2)
        self.role = role
        self.threads = threads
        self.lent_threads = lent_threads
        self._set_threads = set_threads
        self._current = threads

    @property
    def waiting(self) -> bool:
        """A prefill worker waits for the cores (the decode worker then leaves them alone)."""
        return self._flags[_WAITING] == 1

    def close(self) -> None:
        self._flags.close()
        os.close(self._fd)
        os.close(self._decode_fd)

    @contextlib.contextmanager
    def step(self, wide: bool = False) -> Iterator[int]:
        """Around one engine step; yields the threads the step runs with. `wide` (prefill
        worker): take the decode worker's cores too, which pauses decoding for this step."""
        if self.role == LENDER:
            with self._prefill_cores(wide) as threads:
                yield threads
        else:
            with self._decode_cores() as threads:
                yield threads

    @contextlib.contextmanager
    def _prefill_cores(self, wide: bool) -> Iterator[int]:
        self._flags[_WAITING] = 1
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # the decode worker's current step ends
        self._flags[_WAITING] = 0
        try:
            if wide:
                self._flags[_WIDE] = 1  # from now on the decode worker waits on our cores
                fcntl.flock(self._decode_fd, fcntl.LOCK_EX)
            try:
                self._use(self.threads + self.lent_threads if wide else self.threads)
                yield self._current
            finally:
                if wide:
                    fcntl.flock(self._decode_fd, fcntl.LOCK_UN)
                    self._flags[_WIDE] = 0
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _decode_cores(self) -> Iterator[int]:
        # Locks are taken in one order (the prefill worker's cores, then ours) whenever we
        # block on both, and a blocking wait for our own never holds theirs: no deadlock.
        if self._flags[_WIDE]:
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # the wide prompt step ends
            borrowed = True
            fcntl.flock(self._decode_fd, fcntl.LOCK_EX)
        else:
            fcntl.flock(self._decode_fd, fcntl.LOCK_EX)
            borrowed = not self.waiting and self._try_take()
        try:
            self._use(self.threads + self.lent_threads if borrowed else self.threads)
            yield self._current
        finally:
            fcntl.flock(self._decode_fd, fcntl.LOCK_UN)
            if borrowed:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _use(self, threads: int) -> None:
        if threads != self._current:
            self._set_threads(threads)
            self._current = threads

    def _try_take(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
