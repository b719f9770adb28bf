"""Typed engine errors: each names the problem in words a user can act on.

The service edge maps these to HTTP statuses once (a bad request is 4xx, the rest 5xx).
"""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ModelLoadError(EngineError):
    """The model could not be loaded: missing files, unsupported architecture, bad weights."""


class UnsupportedModelError(ModelLoadError):
    """The checkpoint is readable but describes a model this engine does not implement."""


class WeightError(ModelLoadError):
    """A weight is missing, unexpected or has the wrong shape."""


class InvalidRequestError(EngineError):
    """The request itself is wrong (bad sampling parameters, prompt too long, empty prompt)."""


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus requested output) does not fit the model's context or the KV cache."""


class CapacityError(EngineError):
    """The engine cannot take more work now; the caller should retry later or elsewhere."""


class ParallelConfigError(EngineError):
    """The tensor-parallel size does not fit the model's shape or this machine's devices."""


class RankFailedError(EngineError):
    """A tensor-parallel follower rank failed to start or died; the engine cannot compute."""
