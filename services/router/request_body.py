"""Reading a request body within a size limit and validating it into a protocol model."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from services.router.errors import BodyTooLarge, InvalidRequest
from services.router.sse import ClientGone

M = TypeVar("M", bound=BaseModel)

# Parts of a pydantic error location that name a type tried in a union, not a field.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body ({declared} bytes) exceeds the {limit}-byte limit")
    size, chunks = 0, []
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
    except ClientDisconnect as e:
        raise ClientGone() from e
    return b"".join(chunks)


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate JSON `raw` into `model`; InvalidRequest names the first offending field."""
    if not raw.strip():
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        raise _invalid(e) from e


def _invalid(error: ValidationError) -> InvalidRequest:
    errors = error.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        detail = first.get("ctx", {}).get("error", first["msg"])
        return InvalidRequest(f"the request body is not valid JSON: {detail}")
    if not first["loc"]:
        return InvalidRequest("the request body must be a JSON object")
    param = _param(first["loc"])
    shown: list[str] = []
    for e in errors:
        line = f"{_param(e['loc'])}: {_message(e)}"
        if line not in shown:
            shown.append(line)
    return InvalidRequest(f"invalid request: {'; '.join(shown[:3])}", param=param)


def _param(loc: tuple[Any, ...]) -> str:
    parts = [
        str(p)
        for p in loc
        if isinstance(p, int) or (p not in _TYPE_TAGS and "[" not in p and "-" not in p)
    ]
    return ".".join(parts)


def _message(e: dict[str, Any]) -> str:
    if e["type"] == "missing":
        return "this field is required"
    return str(e["msg"])
