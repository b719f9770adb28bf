"""A prefill worker's cores, lent to a decode worker on the same host while no prompt needs them.

On a host with few cores (a CPU box, or any machine where the two phases share a socket), a
one-prefill, one-decode pair splits the cores, and each side idles whenever it has nothing to do.
Prefill is bursty; decode runs step after step. With `--share-cores PATH` on both workers:

- the prefill worker takes the cores for every step it computes, waiting at most for the decode
  worker's current step to end;
- the decode worker, before each step, takes them too if the prefill worker neither holds nor
  waits for them, and then runs that step with its own threads plus the prefill worker's.

The claim is an exclusive `flock` on PATH, so it dies with the process that held it. One byte
mapped from the same file says that the prefill worker is waiting: the decode worker then stops
taking the cores between its steps instead of racing for them, so a prompt waits for one decode
step at most. Thread counts change only between steps, so the two workers never run more
threads than there are cores (`torch.set_num_threads` between steps costs well under a
millisecond here).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Callable, Iterator

LENDER, BORROWER = "prefill", "decode"
_WAITING = 0  # offset of the prefill worker's "I am waiting for the cores" byte


class SharedCoresError(Exception):
    """The shared-cores file cannot be opened, or the worker's role cannot share cores."""


class SharedCores:
    """One worker's side of the claim on a prefill worker's cores."""

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
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SharedCoresError(
                f"cannot open the shared-cores file {path}: {exc.strerror}"
            ) from exc
        if os.fstat(self._fd).st_size < 1:
            os.ftruncate(self._fd, 1)
        self._flags = mmap.mmap(self._fd, 1)
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

    @contextlib.contextmanager
    def step(self) -> Iterator[int]:
        """Around one engine step; yields the threads the step runs with."""
        if self.role == LENDER:
            self._flags[_WAITING] = 1
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # the decode worker's current step ends
            self._flags[_WAITING] = 0
            held = True
        else:
            held = not self.waiting and self._try_take()
        borrowing = held and self.role == BORROWER
        threads = self.threads + self.lent_threads if borrowing else self.threads
        if threads != self._current:
            self._set_threads(threads)
            self._current = threads
        try:
            yield threads
        finally:
            if held:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _try_take(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
