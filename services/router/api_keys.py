"""Client API keys: from `--api-key`, a file (one key a line) and PDSERVE_API_KEYS; none = open."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from services.router.errors import Unauthorized

ENV_VAR = "PDSERVE_API_KEYS"


class APIKeyError(ValueError):
    """The key configuration itself is unusable (unreadable file, empty key)."""


class APIKeys:
    """The set of accepted keys; `check` raises Unauthorized for a missing or wrong key."""

    def __init__(self, keys: list[str]):
        if any(not k for k in keys):
            raise APIKeyError("an API key is empty")
        self._keys = [k.encode() for k in keys]

    @classmethod
    def load(
        cls, flag_keys: list[str] | None = None, key_file: str | None = None, env: bool = True
    ) -> APIKeys:
        """Gather keys from the flag, the file and the environment."""
        keys = list(flag_keys or [])
        if key_file:
            path = Path(key_file)
            try:
                lines = path.read_text().splitlines()
            except OSError as e:
                raise APIKeyError(f"cannot read API key file {path}: {e.strerror}") from e
            file_keys = [
                line.strip() for line in lines if line.strip() and not line.startswith("#")
            ]
            if not file_keys:
                raise APIKeyError(f"API key file {path} holds no key")
            keys += file_keys
        if env:
            keys += [k.strip() for k in os.environ.get(ENV_VAR, "").split(",") if k.strip()]
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Accept `Authorization: Bearer <key>` with a known key, or anything when keys are off."""
        if not self._keys:
            return
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send it as 'Authorization: Bearer <key>'")
        given = key.strip().encode()
        # Compare against every key in constant time so timing reveals nothing about them.
        if not any([hmac.compare_digest(given, k) for k in self._keys]):
            raise Unauthorized("incorrect API key provided")
