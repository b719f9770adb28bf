"""Errors a worker adds around the engine's own (services.engine.errors)."""

from services.engine.errors import EngineError


class EngineUnavailableError(EngineError):
    """The engine thread is not running: it crashed, or the worker is shutting down."""
