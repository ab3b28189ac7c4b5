"""Across processes: several uvicorn workers on one store run each key once; records
written by Python replay through `idem proxy` on the same store, and the other way round.
`IDEM_BIN` is the idem binary (scripts/test passes the one it built)."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from conftest import POSTGRES, REDIS
from idem_engine import Engine, IdempotencyMiddleware

ROOT = Path(__file__).resolve().parents[3]
IDEM = os.environ.get("IDEM_BIN", str(ROOT / "target" / "debug" / "idem"))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(port, process):
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wait_for_workers(port, count, timeout=20):
    """Waits until `count` distinct workers have answered (each names itself in
    `x-worker`): uvicorn's workers start one after another."""
    import time as _time
    seen = set()
    deadline = _time.monotonic() + timeout
    while len(seen) < count and _time.monotonic() < deadline:
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", limits=httpx.Limits(max_keepalive_connections=0)) as http:
                seen.add(http.get("/nowhere").headers.get("x-worker"))
        except httpx.TransportError:
            _time.sleep(0.05)
    return seen


@pytest.mark.parametrize("store", [POSTGRES, REDIS], ids=["postgres", "redis"])
def test_duplicates_across_worker_processes_run_once(store, unique, tmp_path):
    effects = tmp_path / "effects"
    effects.touch()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "workers_app:app", "--workers", "3", "--port", str(port), "--log-level", "warning"],
        cwd=Path(__file__).parent,
        env={**os.environ, "IDEM_STORE": store, "IDEM_TEST_EFFECTS": str(effects)},
    )
    spread = False
    try:
        wait_for(port, server)
        assert len(wait_for_workers(port, 3)) == 3
        # Bursts of duplicates until the duplicates of some key were answered by several
        # workers (the kernel hands connections to whichever worker accepts first); every
        # burst must run each key once.
        for attempt in range(5):
            run = f"{unique}-{attempt}"
            effects.write_text("")

            async def burst():
                # A connection per request: the workers take turns accepting them.
                limits = httpx.Limits(max_keepalive_connections=0)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits) as http:
                    requests = [
                        http.post("/charges", json={"order": f"{run}-{order}"}, headers={"Idempotency-Key": f"{run}-{order}"})
                        for order in range(5)
                        for _ in range(8)
                    ]
                    return await asyncio.gather(*requests)

            answers = asyncio.run(burst())
            assert {answer.status_code for answer in answers} == {201}
            lines = effects.read_text().splitlines()
            assert sorted(line.split()[0] for line in lines) == sorted(f"{run}-{order}" for order in range(5)), lines
            by_order, workers = {}, {}
            for answer in answers:
                by_order.setdefault(answer.json()["order"], set()).add(answer.text)
                workers.setdefault(answer.json()["order"], set()).add(answer.headers["x-worker"])
            assert all(len(bodies) == 1 for bodies in by_order.values()), "every duplicate got the first answer"
            if any(len(answered_by) > 1 for answered_by in workers.values()):
                spread = True
                break
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert spread, "the duplicates of some key reached several workers"


class Upstream(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):
        Upstream.calls += 1
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b'{"charge":"from-the-proxy"}'
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("store", [POSTGRES, REDIS], ids=["postgres", "redis"])
def test_one_record_format_with_idem_proxy(store, unique):
    Upstream.calls = 0
    upstream = HTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    proxy = subprocess.Popen(
        [IDEM, "proxy", "--listen", f"127.0.0.1:{port}", "--store", store, "--upstream", f"http://127.0.0.1:{upstream.server_port}", "--replay-cache", "0s"],
        stdout=subprocess.DEVNULL,
    )
    app = FastAPI()
    runs = []

    @app.post("/charges", status_code=201)
    async def charge(body: dict):
        runs.append(body)
        return {"charge": "from-python"}

    app.add_middleware(IdempotencyMiddleware, engine=Engine(store))
    headers = {"Authorization": "Bearer sk_alice", "content-type": "application/json"}
    try:
        wait_for(port, proxy)

        async def scenario():
            python = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")
            gateway = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
            async with python, gateway:
                # Completed by Python, replayed by the gateway.
                first = await python.post("/charges", content=b'{"amount":1}', headers={**headers, "Idempotency-Key": f"{unique}-p"})
                replay = await gateway.post("/charges", content=b'{"amount":1}', headers={**headers, "Idempotency-Key": f"{unique}-p"})
                assert first.status_code == replay.status_code == 201
                assert replay.json() == {"charge": "from-python"}
                assert replay.headers["x-idempotent-replayed"] == "true"
                # Completed by the gateway, replayed by Python.
                first = await gateway.post("/charges", content=b'{"amount":2}', headers={**headers, "Idempotency-Key": f"{unique}-g"})
                replay = await python.post("/charges", content=b'{"amount":2}', headers={**headers, "Idempotency-Key": f"{unique}-g"})
                assert first.status_code == replay.status_code == 201
                assert replay.json() == {"charge": "from-the-proxy"}
                assert replay.headers["x-idempotent-replayed"] == "true"
                # Another caller's key is another record, wherever it is sent.
                stranger = await gateway.post("/charges", content=b'{"amount":1}', headers={**headers, "Authorization": "Bearer sk_bob", "Idempotency-Key": f"{unique}-p"})
                assert stranger.headers["x-idempotent-replayed"] == "false"

        asyncio.run(scenario())
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        upstream.shutdown()
    assert len(runs) == 1
    assert Upstream.calls == 2, "the proxy ran its own key and the stranger's, never Python's"


def test_an_operator_finds_a_functions_record_by_its_name_and_key(unique):
    from idem_engine import idempotent_function

    engine = Engine(POSTGRES)

    @idempotent_function(key="/order", engine=engine, name="billing.charge")
    def charge(order):
        return {"charged": order}

    charge(f"{unique}-1")
    shown = subprocess.run(
        [IDEM, "records", "show", "--store", POSTGRES, "--function", "billing.charge", "--key", f"{unique}-1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"state": "completed"' in shown.stdout, shown.stdout
    other = subprocess.run(
        [IDEM, "records", "show", "--store", POSTGRES, "--function", "billing.refund", "--key", f"{unique}-1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"state": "absent"' in other.stdout, other.stdout
