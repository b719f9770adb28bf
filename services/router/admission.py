"""The bound on requests one router serves at once: beyond it, 429 with Retry-After."""

from __future__ import annotations

from collections.abc import Callable

from services.router.errors import RETRY_AFTER_SECONDS, TooManyRequests


class Admission:
    """Counts requests in flight; `enter` hands out a release that works exactly once."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> Callable[[], None]:
        """Take a slot or raise TooManyRequests; call the returned function to give it back."""
        if self.in_flight >= self.limit:
            raise TooManyRequests(
                f"this router is already serving {self.in_flight} requests, its limit; "
                "retry shortly",
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        return release
