"""Typed errors of the KV transfer layer; each carries a message a caller can act on.

Every error a holder reports to a fetcher travels as a short code (``ErrorCode``) and is raised
on the fetcher side as the same class, so callers catch one family whichever side failed.
"""

from __future__ import annotations

from enum import StrEnum


class KVTransferError(RuntimeError):
    """Base class of every error raised by kvtransfer."""


class InvalidParams(KVTransferError, ValueError):
    """Malformed kv_transfer_params or fetch arguments (block ids, byte window, backend)."""


class FingerprintMismatch(KVTransferError):
    """The two sides disagree on the KV layout, so the bytes would mean something else."""


class LeaseNotFound(KVTransferError):
    """The lease is unknown to the holder: never issued, already released or expired."""


class AuthError(KVTransferError):
    """The peer did not present the shared internal token."""


class TransferTimeout(KVTransferError, TimeoutError):
    """An operation did not finish within its timeout."""


class TransferError(KVTransferError):
    """The transfer broke: holder unreachable or gone, short or corrupted data."""


class ErrorCode(StrEnum):
    """Codes a holder puts in a refusal; they map one-to-one onto the classes above."""

    INVALID = "invalid_params"
    FINGERPRINT = "fingerprint_mismatch"
    LEASE = "lease_not_found"
    AUTH = "auth"
    TRANSFER = "transfer_error"


_CLASS_OF_CODE: dict[ErrorCode, type[KVTransferError]] = {
    ErrorCode.INVALID: InvalidParams,
    ErrorCode.FINGERPRINT: FingerprintMismatch,
    ErrorCode.LEASE: LeaseNotFound,
    ErrorCode.AUTH: AuthError,
    ErrorCode.TRANSFER: TransferError,
}


def code_of(error: KVTransferError) -> ErrorCode:
    """The wire code for an error raised on the holder side."""
    for code, cls in _CLASS_OF_CODE.items():
        if type(error) is cls:
            return code
    return ErrorCode.TRANSFER


def error_from_code(code: str, message: str) -> KVTransferError:
    """Rebuild on the fetcher side the error a holder reported; unknown codes are TransferError."""
    try:
        cls = _CLASS_OF_CODE[ErrorCode(code)]
    except ValueError:
        cls = TransferError
    return cls(f"holder refused: {message}")
