"""``cellsparse serve``: the engine behind an HTTP API that samapi and cellsparse-api clients
(their QuPath extensions) speak. Needs the ``server`` extra (FastAPI, uvicorn)."""
