"""What the two FastAPI examples' tests share: serving an example with several uvicorn
workers, and sending bursts of concurrent duplicates until the duplicates of some key were
answered by several workers (each answer names its worker in `x-worker`)."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

STORES = {
    "postgres": os.environ.get("IDEM_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    "redis": os.environ.get("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
}


class WorkerHeader:
    """Outermost: names the worker process that answered (replayed or not) in `x-worker`, so
    the tests see that the duplicates of one key reached several processes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def named(message):
            if message["type"] == "http.response.start":
                worker = (b"x-worker", str(os.getpid()).encode())
                message = {**message, "headers": [*message.get("headers", []), worker]}
            await send(message)

        await self.app(scope, receive, named)


def named_app():
    """The example in the working directory (its `app.py`), as written, wrapped in
    `WorkerHeader`: uvicorn's factory for `workers`."""
    sys.path.insert(0, os.getcwd())
    from app import app

    return WorkerHeader(app)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def workers(example: Path, count: int, env: dict):
    """`uvicorn app:app --workers count` in `example`, once every worker answers: its URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "fastapi_workers:named_app", "--factory",
            "--app-dir", str(Path(__file__).resolve().parent),
            "--workers", str(count), "--port", str(port), "--log-level", "warning",
        ],
        cwd=example,
        env={**os.environ, **env},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        seen, deadline = set(), time.monotonic() + 30
        while len(seen) < count and time.monotonic() < deadline:
            try:
                with httpx.Client(base_url=url, limits=httpx.Limits(max_keepalive_connections=0)) as http:
                    seen.add(http.get("/nowhere").headers.get("x-worker"))
            except httpx.TransportError:
                time.sleep(0.05)
        assert len(seen) == count, f"{len(seen)} of {count} workers answered"
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def bursts(url: str, send, check, attempts: int = 5):
    """Calls `send(client, run)` for bursts of requests (each on its own connection), then
    `check(run, answers)`, until the duplicates of some key reached several workers."""
    for attempt in range(attempts):
        run = f"{os.getpid()}-{time.time_ns()}-{attempt}"

        async def burst():
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
                return await asyncio.gather(*send(client, run))

        answers = asyncio.run(burst())
        check(run, answers)
        by_key = {}
        for answer in answers:
            by_key.setdefault(answer.request.headers["idempotency-key"], set()).add(answer.headers["x-worker"])
        if any(len(answered_by) > 1 for answered_by in by_key.values()):
            return
    raise AssertionError("no key's duplicates reached several workers")
