"""``cellsparse serve``: box-prompt latency over HTTP against the engine, and throughput.

Prints one JSON object:

* ``http_box_ms``: median time of ``POST /sam/`` for 50 successive boxes on the same image
  (a 512 x 512 uint16 nuclei image sent as base64 PNG in every request, as samapi clients
  do; its embedding is computed by the first request and reused), measured by a client
  holding one keep-alive connection to the real server (``cellsparse serve`` in its own
  process, uvicorn, loopback).
* ``engine_box_ms``: the same 50 boxes through ``SamPrompter.prompt`` in this process;
  ``engine_features_ms`` adds the conversion to GeoJSON features the server does.
* ``throughput``: 8 concurrent clients posting boxes for 30 s: requests per second,
  failed requests, and latency percentiles.

Both sides use the same seeded random vit_t weights (installed as the cached official
checkpoint in a temporary user folder). Run on an otherwise idle machine:
``.venv/bin/python benchmarks/server.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def log(message: str) -> None:
    print(f"[server] {message}", file=sys.stderr, flush=True)


def _boxes(n: int, shape: tuple[int, int], seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    h, w = shape
    out = []
    for _ in range(n):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        out.append([x0, y0, x0 + int(rng.integers(20, 60)), y0 + int(rng.integers(20, 60))])
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """One keep-alive HTTP connection posting JSON."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", "accept": "application/json"}
        self.connection.request("POST", path, body=data, headers=headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())


def _wait(port: int, process: subprocess.Popen, limit: float = 120.0) -> None:
    start = time.time()
    while time.time() - start < limit:
        if process.poll() is not None:
            raise RuntimeError("the server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boxes", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.models import build_sam
    from napari_cellsparse.sam.prompting import SamPrompter
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.server.images import encode_png
    from napari_cellsparse.server.sam_service import mask_features

    out: dict[str, Any] = {"loadavg_start": os.getloadavg()[0]}
    home = Path(tempfile.mkdtemp(prefix="cellsparse-bench-"))
    try:
        torch.manual_seed(0)
        model = build_sam("vit_t").eval()
        weights = home / "sam-weights" / "mobile_sam.pt"
        weights.parent.mkdir(parents=True)
        torch.save(model.state_dict(), weights)
        image, _ = make_nuclei((512, 512), n_objects=60, seed=1)
        b64 = encode_png(image)
        boxes = _boxes(args.boxes, image.shape)

        prompter = SamPrompter(model, "bench")
        run_sync(prompter.set_image(image))
        prompter.prompt(box=boxes[0])  # warm-up
        engine, features = [], []
        for box in boxes:
            start = time.perf_counter()
            masks = prompter.prompt(box=box)
            engine.append(time.perf_counter() - start)
            mask_features(masks, "vit_t")
            features.append(time.perf_counter() - start)
        out["engine_box_ms"] = round(1000 * float(np.median(engine)), 1)
        out["engine_features_ms"] = round(1000 * float(np.median(features)), 1)

        port = _free_port()
        env = {**os.environ, "NAPARI_CELLSPARSE_HOME": str(home)}
        command = [sys.executable, "-m", "napari_cellsparse.cli", "serve", "--port", str(port),
                   "--device", "cpu"]  # fmt: skip
        server = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            _wait(port, server)
            client = Client(port)
            start = time.perf_counter()
            status, _ = client.post("/sam/", {"type": "vit_t", "b64img": b64, "bbox": boxes[0]})
            out["http_first_box_s"] = round(time.perf_counter() - start, 2)  # load + embed
            assert status == 200
            times, failed = [], 0
            for box in boxes:
                start = time.perf_counter()
                status, _ = client.post("/sam/", {"type": "vit_t", "b64img": b64, "bbox": box})
                times.append(time.perf_counter() - start)
                failed += status != 200
            out["http_box_ms"] = round(1000 * float(np.median(times)), 1)
            out["http_box_failed"] = failed
            out["http_over_engine_ms"] = round(out["http_box_ms"] - out["engine_features_ms"], 1)

            latencies: list[float] = []
            failures = [0]
            lock = threading.Lock()
            stop = time.perf_counter() + args.seconds

            def worker(seed: int) -> None:
                own = Client(port)
                for box in _boxes(10_000, image.shape, seed):
                    if time.perf_counter() > stop:
                        return
                    begin = time.perf_counter()
                    try:
                        status, _ = own.post("/sam/", {"type": "vit_t", "b64img": b64, "bbox": box})
                    except (OSError, http.client.HTTPException):
                        status = 0
                        own = Client(port)
                    with lock:
                        latencies.append(time.perf_counter() - begin)
                        failures[0] += status != 200

            threads = [threading.Thread(target=worker, args=(i + 1,)) for i in range(args.clients)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - began
            lat = np.asarray(latencies) * 1000
            out["throughput"] = {
                "clients": args.clients,
                "seconds": round(elapsed, 1),
                "requests": len(latencies),
                "failed": failures[0],
                "requests_per_s": round(len(latencies) / elapsed, 2),
                "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 1),
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()[0]
    text = json.dumps(out)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
