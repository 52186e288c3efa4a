"""The exception hierarchy. Only the CLI turns an error into a message and an exit code;
only the HTTP layer turns a request error into a status."""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STARTUP = 3
EXIT_LISTEN = 4  # a port could not be bound (in use, not permitted, not an address here): nothing was started


class InferdError(Exception):
    """Base of every error inferd raises on purpose."""


class ConfigError(InferdError):
    """A config file has one or more problems; each names its YAML path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


class ListenError(InferdError):
    """A listening port could not be bound; raised before any worker starts."""


class StartupError(InferdError):
    """A model could not be started (its file does not load, its warmup fails)."""


class RequestError(InferdError):
    """A request failed; `status` is the HTTP status the caller gets.

    `message` is all the caller sees; `fields` join it in the JSON body (e.g. a reload's problems);
    `detail` (e.g. a model's traceback) goes to the server's log only."""

    status = 500

    def __init__(
        self,
        message: str,
        headers: dict[str, str] | None = None,
        fields: dict[str, Any] | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.fields = fields or {}
        self.detail = detail


class BadRequest(RequestError):
    status = 400


class Unauthorized(RequestError):
    """No key, or a wrong one, where the route needs one."""

    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(RequestError):
    """The route exists but does not answer this caller (an admin route from the network)."""

    status = 403


class NotFound(RequestError):
    status = 404


class ModelNotFound(NotFound):
    pass


class MethodNotAllowed(RequestError):
    status = 405


class BodyTooSlow(RequestError):
    """The client did not send its whole body within `server.body_timeout_s`."""

    status = 408


class PayloadTooLarge(RequestError):
    status = 413


class QueueFull(RequestError):
    status = 429


class ModelFailed(RequestError):
    """The model raised on this request's input: the caller's data is the likely cause."""

    status = 422


class ModelUnavailable(RequestError):
    status = 503


class RequestTimedOut(RequestError):
    status = 504


class ClientGone(RequestError):
    """The client disconnected before its answer was ready: nothing is sent. 499 is nginx's code
    for it, used in logs and metrics so that a client leaving never counts as a server fault."""

    status = 499
