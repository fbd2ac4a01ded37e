"""The FastAPI application: samapi's and cellsparse-api's routes, guarded.

* Loopback only unless ``--host`` says otherwise; an optional bearer token.
* Request bodies above a size limit are refused (413) before they are read whole, and
  images are decoded with a pixel limit (:mod:`napari_cellsparse.server.images`).
* Bad input is a 4xx with a sentence saying what to change; an unexpected failure is a
  500 that names the error type and leaves the traceback in the server's log only.
* Handlers are plain functions, which FastAPI runs in worker threads: a long training
  request does not hold up SAM prompts.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import BackendUnavailableError, BadInputError, CancelledError, WeightsError
from ..sam.fetch import DownloadPolicy
from .bodies import (
    CellposeBody,
    CellsparseBody,
    CellsparseResetBody,
    SAMAutoMaskBody,
    SAMBody,
    SAMWeightsBody,
    StarDistBody,
)
from .sam_service import SamService
from .training_service import TrainingService

__all__ = ["DEFAULT_MAX_BODY_MB", "create_app"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_MB = 512.0
_STATUS = (
    (BadInputError, 400),
    (WeightsError, 503),
    (BackendUnavailableError, 501),
    (CancelledError, 409),
)


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        limit = self.max_bytes / 2**20
        response = JSONResponse(
            {"detail": f"The request body is larger than the server accepts ({limit:.0f} MB)."},
            status_code=413,
        )
        await response({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass


_BEARER = HTTPBearer(auto_error=False)


def _authorized(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """With a token set, every request needs ``Authorization: Bearer <token>``."""
    token = request.app.state.token
    if token and (
        credentials is None or not secrets.compare_digest(credentials.credentials, token)
    ):
        raise HTTPException(401, "A bearer token is required (Authorization: Bearer ...).")


def create_app(
    sam: SamService | None = None,
    training: TrainingService | None = None,
    token: str | None = None,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    weights: DownloadPolicy | None = None,
) -> Any:
    """The application; ``sam`` and ``training`` default to fresh services. ``weights``
    limits weights downloads (default: http(s) URLs of public addresses only)."""
    from .. import __version__

    sam = sam or SamService()
    training = training or TrainingService()
    app = FastAPI(
        title="napari-cellsparse server",
        version=__version__,
        dependencies=[Depends(_authorized)],
    )
    app.state.sam, app.state.training, app.state.token = sam, training, token

    for error, status in _STATUS:

        def handler(_request: Request, err: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(err)}, status_code=status)

        app.add_exception_handler(error, handler)

    @app.exception_handler(Exception)
    def unexpected(_request: Request, err: Exception) -> JSONResponse:
        log.error("request failed", exc_info=err)
        return JSONResponse(
            {"detail": f"Internal error ({type(err).__name__}); see the server's log."},
            status_code=500,
        )

    # -- samapi ----------------------------------------------------------------------------
    @app.get("/sam/version/", response_class=PlainTextResponse)
    def sam_version() -> str:
        return __version__

    @app.post("/sam/")
    def sam_prompt(body: SAMBody) -> list[dict[str, Any]]:
        return sam.prompt(body)

    @app.post("/sam/automask/")
    def sam_automask(body: SAMAutoMaskBody) -> list[dict[str, Any]]:
        return sam.automask(body)

    @app.get("/sam/weights/")
    def sam_weights(type: str | None = None) -> list[dict[str, str]]:
        return sam.weights(type)

    @app.post("/sam/weights/", response_class=PlainTextResponse)
    def sam_register(body: SAMWeightsBody) -> str:
        return sam.register(body, weights)

    @app.get("/sam/weights/cancel/", response_class=PlainTextResponse)
    def sam_cancel() -> str:
        sam.cancel_downloads()
        return "Cancel signal sent"

    @app.get("/sam/progress/")
    def sam_progress() -> dict[str, Any]:
        return sam.progress.as_dict()

    # -- cellsparse-api --------------------------------------------------------------------
    @app.post("/stardist/")
    def stardist(body: StarDistBody) -> list[dict[str, Any]]:
        return training.run("stardist", body)

    @app.post("/cellpose/")
    def cellpose(body: CellposeBody) -> list[dict[str, Any]]:
        return training.run("cellpose", body)

    @app.post("/elephant/")
    def elephant(body: CellsparseBody) -> list[dict[str, Any]]:
        return training.run("elephant", body)

    for endpoint in ("stardist", "cellpose", "elephant"):

        def reset(body: CellsparseResetBody, endpoint: str = endpoint) -> str:
            return training.reset(endpoint, body)

        app.post(f"/{endpoint}/reset/", name=f"{endpoint}_reset")(reset)

    if max_body_mb:
        app.add_middleware(BodyLimit, max_bytes=int(max_body_mb * 2**20))
    return app
