"""Stop strings over streamed text: hold back what could be the start of a stop string."""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """Add streamed text; return (text safe to emit, whether a stop string was hit)."""
        if self.hit:
            return "", True
        if not self.stops:
            return text, False
        buf = self.pending + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, self.pending = True, ""
            return buf[:cut], True
        if final:
            self.pending = ""
            return buf, False
        # Keep the longest tail that is a prefix of some stop string; emit the rest.
        keep = max(
            (k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])), default=0
        )
        self.pending = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False
