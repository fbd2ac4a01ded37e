"""``cellsparse serve``: the HTTP server speaking the samapi and cellsparse-api bodies, for
QuPath."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_device, command

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: Any) -> None:
    """Add the ``serve`` command."""
    serve = command(
        sub, "serve", help="HTTP server speaking the samapi and cellsparse-api bodies (QuPath)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--token", help="require 'Authorization: Bearer TOKEN' (or CELLSPARSE_TOKEN)"
    )
    add_device(serve)
    serve.add_argument("--max-body-mb", type=float, default=512.0, help="largest request body")
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to NAME (Host header; repeatable); loopback "
        "names, --host and, with --host 0.0.0.0, this machine's names are always answered",
    )
    serve.add_argument(
        "--allow-private-weights",
        action="store_true",
        help="let POST /sam/weights/ download from loopback and private addresses",
    )
    serve.add_argument(
        "--max-weights-mb", type=float, help="largest weights download (default: per model)"
    )
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; warns when the address is reachable from other machines."""
    import os

    from ..core.errors import BackendUnavailableError
    from ..core.paths import data_home

    try:
        import uvicorn

        from ..sam.embedding import EmbeddingCache
        from ..sam.fetch import DownloadPolicy
        from ..server.app import create_app
        from ..server.guards import allowed_hosts
        from ..server.sam_service import SamService
        from ..server.training_service import TrainingService
    except ImportError as err:
        raise BackendUnavailableError("The server", "server", err) from err
    token = args.token or os.environ.get("CELLSPARSE_TOKEN") or None
    if args.host not in LOOPBACK:
        print(
            f"WARNING: listening on {args.host}: other machines can reach this server"
            + ("" if token else " and no --token is set: anyone on the network can use it")
            + ".",
            file=sys.stderr,
        )
    cache = EmbeddingCache(disk_dir=data_home() / "embeddings")
    weights = DownloadPolicy(allow_private=args.allow_private_weights, max_mb=args.max_weights_mb)
    app = create_app(
        SamService(cache, args.device),
        TrainingService(args.device),
        token,
        args.max_body_mb,
        allowed_hosts(args.host, args.allow_host),
        weights,
    )
    print(f"serving samapi and cellsparse-api routes on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
