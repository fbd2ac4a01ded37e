"""What every request passes before a route sees it: Host, size, token, validation errors.

* The ``Host`` header must name this server (an allow-list): a web page that rebinds its
  own domain name to 127.0.0.1 (DNS rebinding) still sends its own name, and is refused.
* A body over the size limit is a 413 whether its length is declared or streamed
  (chunked), before it is read whole.
* The bearer token is compared as bytes in constant time; any header that is not the token
  (non-ASCII bytes included) is a 401.
* A 422 always serialises: inputs that JSON cannot hold (NaN, Infinity) or that are large
  (a base64 image) are echoed as a short ``repr``.
"""

from __future__ import annotations

import math
import secrets
import socket
from collections.abc import Iterable, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..core.errors import BadInputError

__all__ = [
    "LOOPBACK_HOSTS",
    "WILDCARD_HOSTS",
    "BodyLimit",
    "HostCheck",
    "allowed_hosts",
    "authorized",
    "validation_failed",
]

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
ECHO_LIMIT = 80  # characters of a refused input echoed back in a 422
_NOT_IN_HOST = frozenset("@/?#\\")


def _hostname(host: str) -> str | None:
    """A Host header's host name (with or without port; IPv6 in brackets), lower-cased,
    without port and brackets; ``None`` when it is not one (user info, a path, spaces...)."""
    if not host or any(c in _NOT_IN_HOST or c.isspace() for c in host):
        return None
    try:
        parts = urlsplit(f"//{host}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return None
    return parts.hostname or None


def _listed(name: str) -> str | None:
    """An allow-list entry as :func:`_hostname` reads it; a bare IPv6 address is bracketed."""
    name = name.strip().split("%")[0]  # no IPv6 zone: browsers do not send it
    if name.count(":") > 1 and not name.startswith("["):
        name = f"[{name}]"
    return _hostname(name)


def _own_names() -> set[str]:
    """This machine's host name, fully qualified name and the addresses they resolve to."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            infos = socket.getaddrinfo(name, None)
        except (OSError, UnicodeError):
            continue
        names.update(str(info[4][0]) for info in infos)
    return names


def allowed_hosts(host: str = "127.0.0.1", extra: Iterable[str] = ()) -> list[str]:
    """The Host names a server listening on ``host`` answers: loopback names, ``host``
    itself, ``extra`` (``--allow-host``) and, on a wildcard address, this machine's names
    and addresses. An ``extra`` entry that is not a host name is refused by name."""
    extra = list(extra)
    for name in extra:
        if _listed(name) is None:
            raise BadInputError(f"--allow-host {name!r} is not a host name or address.")
    names = [*LOOPBACK_HOSTS, *extra]
    if host in WILDCARD_HOSTS:
        names += sorted(_own_names())
    else:
        names.append(host)
    return names


class HostCheck:
    """ASGI middleware: 400 for a request whose ``Host`` header is not in the allow-list."""

    def __init__(self, app: Any, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(filter(None, map(_listed, hosts)))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if _hostname(header) in self.hosts:
            await self.app(scope, receive, send)
            return
        shown = repr(header[:ECHO_LIMIT]) if header else "none"
        response = JSONResponse(
            {
                "detail": f"Invalid host header ({shown}): this server answers only requests "
                "addressed to its own names; start it with --allow-host NAME to add one."
            },
            status_code=400,
        )
        await response(scope, receive, send)


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        limit = self.max_bytes / 2**20
        return f"The request body is larger than the server accepts ({limit:g} MB)."

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # An HTTPException passes FastAPI's body reading unchanged (any other error
                # there becomes 400 "error parsing the body").
                raise _TooLarge(413, self._message())
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, send)

    async def _refuse(self, scope: dict, send: Any) -> None:
        response = JSONResponse({"detail": self._message()}, status_code=413)
        await response(scope, None, send)


class _TooLarge(HTTPException):
    pass


_BEARER = HTTPBearer(auto_error=False)


def authorized(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """With a token set, every request needs ``Authorization: Bearer <token>``."""
    token = request.app.state.token
    if not token:
        return
    # Headers arrive as latin-1 text: back to their bytes, compared with the token's UTF-8.
    sent = credentials.credentials.encode("latin-1", "replace") if credentials else b""
    if not secrets.compare_digest(sent, token.encode("utf-8")):
        raise HTTPException(401, "A bearer token is required (Authorization: Bearer ...).")


def _echo(value: Any) -> Any:
    """A refused input as JSON can hold it: finite numbers and short text as they are,
    anything else (NaN, Infinity, a long string, a whole body, an error) as a short repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) < 10**15:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= ECHO_LIMIT:
        return value
    text = str(value) if isinstance(value, Exception) else repr(value)
    return text if len(text) <= ECHO_LIMIT else text[: ECHO_LIMIT - 3] + "..."


async def validation_failed(_request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 (``detail``: a list of ``loc``, ``msg``, ``type``, ``input``, ``ctx``)
    that always serialises, whatever the refused input was."""
    errors = []
    for error in err.errors():
        shown = {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
            "input": _echo(error.get("input")),
        }
        if error.get("ctx"):
            shown["ctx"] = {str(k): _echo(v) for k, v in error["ctx"].items()}
        errors.append(shown)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
