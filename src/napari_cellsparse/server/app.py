"""The FastAPI application: samapi's and cellsparse-api's routes, guarded.

* Loopback only unless ``--host`` says otherwise; requests must name an allowed host
  (against DNS rebinding); an optional bearer token, which also guards the OpenAPI pages.
* Request bodies above a size limit are refused (413) before they are read whole, and
  images are decoded with a pixel limit (:mod:`napari_cellsparse.server.images`); see
  :mod:`napari_cellsparse.server.guards`.
* Bad input is a 4xx with a sentence saying what to change; an unexpected failure is a
  500 that names the error type and leaves the traceback in the server's log only.
* Handlers are plain functions, which FastAPI runs in worker threads: a long training
  request does not hold up SAM prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from ..core.errors import BackendUnavailableError, BadInputError, CancelledError, WeightsError
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
from .guards import LOOPBACK_HOSTS, BodyLimit, HostCheck, authorized, validation_failed
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


def create_app(
    sam: SamService | None = None,
    training: TrainingService | None = None,
    token: str | None = None,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    hosts: Sequence[str] = LOOPBACK_HOSTS,
    weights: DownloadPolicy | None = None,
) -> Any:
    """The application; ``sam`` and ``training`` default to fresh services. ``hosts``: the
    names a request's ``Host`` header may carry (:func:`~.guards.allowed_hosts`);
    ``weights`` limits weights downloads (default: http(s) URLs of public addresses only)."""
    from .. import __version__

    sam = sam or SamService()
    training = training or TrainingService()
    app = FastAPI(
        title="napari-cellsparse server",
        version=__version__,
        dependencies=[Depends(authorized)],
        openapi_url=None,  # served below, behind the token like every route
        docs_url=None,
        redoc_url=None,
    )
    app.state.sam, app.state.training, app.state.token = sam, training, token
    app.add_exception_handler(RequestValidationError, validation_failed)

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

    # -- the OpenAPI schema and its pages ----------------------------------------------------
    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=app.title)

    if max_body_mb:
        app.add_middleware(BodyLimit, max_bytes=int(max_body_mb * 2**20))
    app.add_middleware(HostCheck, hosts=hosts)  # added last: checked first
    return app
