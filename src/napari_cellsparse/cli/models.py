"""``cellsparse models`` (the stored models) and ``cellsparse weights`` (SAM checkpoints)."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import add_sam_model, command


def register(sub: Any) -> None:
    """Add the ``models`` and ``weights`` commands."""
    models = command(sub, "models", help="list the stored models")
    models.set_defaults(func=run_models)

    weights = command(sub, "weights", help="list, download or add SAM checkpoints")
    weights.add_argument("action", choices=["list", "download", "add"])
    weights.add_argument("file", nargs="?", help="add: a local checkpoint file to register")
    weights.add_argument("--name", help="add: the name clients see (default: the file's stem)")
    add_sam_model(weights, "which SAM checkpoint")
    weights.add_argument("--url", help="download from this mirror instead")
    weights.add_argument("--sha256", help="expected checksum for --url")
    weights.set_defaults(func=run_weights)


def run_models(args: argparse.Namespace) -> int:
    """One line per stored model (damaged ones say why), then the model folder."""
    from ..training import list_models, models_dir

    for meta in list_models():
        if "error" in meta:
            print(f"{meta['name']}\tdamaged: {meta['error']}")
        else:
            print(
                f"{meta['name']}\t{meta.get('backend')}\t{meta.get('steps')} steps\t"
                f"{meta.get('images')} image(s)\tupdated {meta.get('updated')}"
            )
    print(f"model folder: {models_dir()}")
    return 0


def run_weights(args: argparse.Namespace) -> int:
    """List the SAM checkpoints, download one, or register a local file."""
    from ..core.errors import BadInputError
    from ..sam.registry import add_local_weights, read_entries
    from ..sam.weights import CHECKPOINTS, download, weights_dir

    if args.action == "list":
        for ckpt in CHECKPOINTS.values():
            have = "cached" if (weights_dir() / ckpt.filename).is_file() else "missing"
            print(f"{ckpt.model_type}\t{ckpt.size_mb} MB\t{have}\t{ckpt.url}")
        for entry in read_entries():
            print(f"{entry['type']}\t{entry['name']}\tregistered\t{entry['url']}")
        print(f"cache folder: {weights_dir()}")
        return 0
    if args.action == "add":
        if not args.file:
            raise BadInputError("weights add needs the checkpoint FILE to add.")
        url, path = add_local_weights(args.model, args.file, args.name)
        print(f"registered {args.model} weights {url} (copied to {path})")
        return 0
    path = download(args.model, args.url, args.sha256)
    print(f"saved {path}")
    return 0
