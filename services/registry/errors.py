"""The registry's one error type: the registry cannot be reached, or holds something unreadable."""


class RegistryError(RuntimeError):
    """The worker registry failed: Redis unreachable, a bad URL, or a malformed record."""
