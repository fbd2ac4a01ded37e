"""Opening a weights URL with limits: http(s) only, public addresses, a size cap and a deadline.

A URL sent to the server is chosen by whoever can reach it, so the server must not fetch
local files (``file:``), other schemes, or addresses on the machine or the lab network
(loopback, private, link-local, ...), which would make it a port scanner and a way into
services that trust their own network. Every address a host name resolves to is checked,
at connect time (the address connected to is one that was checked, so a second DNS answer
cannot swap it) and again for each redirect. The CLI and Python callers are trusted with
their own URLs: their :class:`DownloadPolicy` allows private addresses (a lab mirror) and
proxies, and still has the scheme check, the size cap and the deadline.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..core.errors import BadInputError

__all__ = [
    "DEFAULT_DEADLINE_S",
    "DEFAULT_TIMEOUT_S",
    "SCHEMES",
    "DownloadPolicy",
    "check_url",
    "open_url",
    "read_chunk",
]

SCHEMES = ("https", "http")
DEFAULT_TIMEOUT_S = 30.0  # one socket operation (connect, one read)
DEFAULT_DEADLINE_S = 2 * 3600.0  # the whole download (vit_h, 2.4 GB, at ~0.5 MB/s)
SIZE_MARGIN = 1.25  # a checkpoint may be this much larger than the official one ...
SIZE_SLACK_MB = 16.0  # ... plus this (wrapped state dicts, extra keys)


@dataclass(frozen=True)
class DownloadPolicy:
    """Limits of a weights download.

    ``allow_private``: also loopback, private, link-local and reserved addresses (and
    the environment's proxies); ``max_mb``: the size cap (None: the model's official size
    with a margin); ``timeout_s``: per socket operation; ``deadline_s``: the whole download.
    """

    allow_private: bool = False
    max_mb: float | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    deadline_s: float = DEFAULT_DEADLINE_S

    def max_bytes(self, official_mb: float) -> int:
        """The size cap in bytes for a model whose official checkpoint is ``official_mb``."""
        cap = self.max_mb if self.max_mb is not None else official_mb * SIZE_MARGIN + SIZE_SLACK_MB
        return int(cap * 2**20)


def _refused(address: str) -> bool:
    """Whether ``address`` is not a public unicast address (IPv4 inside IPv6 unwrapped)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and _refused(str(embedded)):
            return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


def _refusal(url: str, address: str) -> BadInputError:
    return BadInputError(
        f"The weights URL {url} leads to {address}, a loopback, private or reserved address; "
        "this server downloads weights only from public addresses. Start it with "
        "--allow-private-weights to allow them, or add a local file on the server's machine "
        "with: cellsparse weights add FILE --model TYPE"
    )


def _resolve(host: str, port: int) -> list[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def check_url(url: str, policy: DownloadPolicy) -> None:
    """Raise :class:`BadInputError` for a URL that is not http(s), has no host, or (unless
    the policy allows private addresses) has a host resolving to a non-public address.
    A host that does not resolve passes: the download then fails like any other."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as err:
        raise BadInputError(f"The weights URL {url!r} is malformed ({err}).") from None
    if parts.scheme.lower() not in SCHEMES:
        raise BadInputError(
            f"The weights URL {url!r} must start with https:// or http://"
            f" (not {parts.scheme or 'no scheme'}); add a local file on the server's machine "
            "with: cellsparse weights add FILE --model TYPE"
        )
    if not parts.hostname:
        raise BadInputError(f"The weights URL {url!r} has no host name.")
    if policy.allow_private:
        return
    try:
        infos = _resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        return
    for info in infos:
        if _refused(info[4][0]):
            raise _refusal(url, info[4][0])


def _guarded_connection(
    url: str, address: tuple[str, int], timeout: float | None, source: Any = None
) -> socket.socket:
    """``socket.create_connection`` that checks every resolved address before connecting
    and connects only to checked ones."""
    host, port = address
    infos = _resolve(host, port)
    for info in infos:
        if _refused(info[4][0]):
            raise _refusal(url, info[4][0])
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            if source:
                sock.bind(source)
            sock.connect(sockaddr)
            return sock
        except OSError as err:
            sock.close()
            error = err
    raise error


class _GuardedHTTP(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connection, self.host)


class _GuardedHTTPS(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connection, self.host)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTP, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPS, req, context=self._context)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that :func:`check_url` accepts."""

    def __init__(self, policy: DownloadPolicy) -> None:
        self.policy = policy

    def http_error_302(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        location = headers.get("location") or headers.get("uri")
        if location:
            try:
                check_url(urllib.parse.urljoin(req.full_url, location), self.policy)
            except BadInputError:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def open_url(url: str, policy: DownloadPolicy) -> http.client.HTTPResponse:
    """Open ``url`` for a download under ``policy``: http(s) only (no file, ftp or data
    handlers), redirects checked, and, unless private addresses are allowed, no proxy and
    every address checked at connect time. Raises :class:`BadInputError` for a refused URL
    and ``OSError``/``HTTPException`` when the download cannot start."""
    check_url(url, policy)
    handlers: list[Any] = [
        urllib.request.UnknownHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        _CheckedRedirects(policy),
    ]
    if policy.allow_private:
        handlers += [
            urllib.request.ProxyHandler(),
            urllib.request.HTTPHandler(),
            urllib.request.HTTPSHandler(),
        ]
    else:
        handlers += [_GuardedHTTPHandler(), _GuardedHTTPSHandler()]
    opener = urllib.request.OpenerDirector()
    for handler in handlers:
        opener.add_handler(handler)
    return opener.open(url, timeout=policy.timeout_s)


def read_chunk(response: http.client.HTTPResponse, size: int, deadline: float) -> bytes:
    """Up to ``size`` bytes (fewer only at the end), reading as they arrive so that a
    server trickling bytes cannot hold the download past ``deadline`` (a
    ``time.monotonic()`` value); raises ``TimeoutError`` then."""
    pieces: list[bytes] = []
    got = 0
    while got < size:
        if time.monotonic() > deadline:
            raise TimeoutError("the download did not finish in time")
        piece = response.read1(size - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)
