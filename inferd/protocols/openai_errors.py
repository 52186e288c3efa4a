"""Errors on the OpenAI-compatible routes read as OpenAI's do: `{"error": {"message", "type", "param",
"code"}}`. The `openai` client puts `error.message` in the text of the exception it raises and
`code`, `param` and `type` on it; inferd's own `{"error": str}` would leave the exception saying
only "Error code: 400". The request's id stays beside the error, as on every other route."""

from __future__ import annotations

from typing import Any

from inferd.errors import ModelNotFound, RequestError

PREFIX = "/v1/"  # the OpenAI routes' paths, and any path under it that matches no route

_TYPES = {401: "authentication_error", 403: "permission_error", 429: "requests"}
_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def openai_error_body(error: RequestError, request_id: str) -> dict[str, Any]:
    status = error.status
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = "model_not_found" if isinstance(error, ModelNotFound) else _CODES.get(status)
    return {
        "error": {"message": error.message, "type": kind, "param": None, "code": code, **error.fields},
        "request_id": request_id,
    }
