"""The client against the real `idem serve` (IDEM_BIN, the debug build by default) and an
operation served here: one execution per key through transient failures, and the
begin / renew / complete / release flow."""

import asyncio
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from idem_serve_client import Absent, Acquired, Completed, CoordinationClient, IdempotencyError, Processing

ROOT = Path(__file__).resolve().parents[3]
IDEM = os.environ.get("IDEM_BIN", str(ROOT / "target" / "debug" / "idem"))


class Operation(BaseHTTPRequestHandler):
    calls = []
    busy_first = True

    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Operation.calls.append(payload)
        if Operation.busy_first:
            Operation.busy_first = False
            self.send_response(503)
            self.send_header("retry-after", "0")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = json.dumps({"charge_id": f"ch_{len(Operation.calls)}", "amount": payload["amount"]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def serve():
    operation = HTTPServer(("127.0.0.1", 0), Operation)
    threading.Thread(target=operation.serve_forever, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [IDEM, "serve", "--listen", f"127.0.0.1:{port}", "--store", "memory://",
         "--operation", f"payment.charge=http://127.0.0.1:{operation.server_port}/charge"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)
    operation.shutdown()


def test_execute_runs_once_per_key_through_a_transient_failure(serve):
    async def scenario():
        async with CoordinationClient(serve, base_delay=0.01) as idem:
            first = await idem.execute("payment.charge", {"amount": 1000}, key="order-1")
            again = await idem.execute("payment.charge", {"amount": 1000}, key="order-1")
            return first, again

    first, again = asyncio.run(scenario())
    assert first == again == {"charge_id": "ch_2", "amount": 1000}
    assert len(Operation.calls) == 2, "the 503 was not processed, the retry ran once, the replay not at all"


def test_the_two_phase_flow(serve):
    async def scenario():
        async with CoordinationClient(serve) as idem:
            begun = await idem.begin("payment.charge", {"amount": 5}, key="two-phase-1")
            assert isinstance(begun, Acquired) and begun.lease_token.isdigit()
            assert isinstance(await idem.begin("payment.charge", {"amount": 5}, key="two-phase-1"), Processing)
            assert await idem.renew(begun.key, begun.lease_token) > 0
            assert await idem.complete(begun.key, begun.lease_token, {"done": True}) == {"done": True}
            assert await idem.status(begun.key) == Completed(begun.key, {"done": True})
            assert await idem.begin("payment.charge", {"amount": 5}, key="two-phase-1") == Completed(begun.key, {"done": True})

            released = await idem.begin("payment.charge", {"amount": 6}, key="two-phase-2")
            await idem.release(released.key, released.lease_token)
            assert await idem.status(released.key) == Absent(released.key)
            with pytest.raises(TypeError):
                await idem.renew(released.key, 42)

    asyncio.run(scenario())


def test_errors_carry_idems_code_and_advice(serve):
    async def scenario():
        async with CoordinationClient(serve) as idem:
            with pytest.raises(IdempotencyError) as unknown:
                await idem.execute("payment.refund", {}, key="unknown-1")
            assert unknown.value.code == "UNKNOWN_OPERATION"
            assert unknown.value.status == 404 or unknown.value.status == 400
            await idem.execute("payment.charge", {"amount": 7}, key="reused-1")
            with pytest.raises(IdempotencyError) as reused:
                await idem.execute("payment.charge", {"amount": 8}, key="reused-1")
            assert reused.value.status == 422
            assert reused.value.retry == "new_key"

    asyncio.run(scenario())


def test_no_server_is_a_retryable_error_after_the_retries():
    async def scenario():
        async with CoordinationClient("http://127.0.0.1:9", retries=1, base_delay=0.01) as idem:
            with pytest.raises(IdempotencyError) as failed:
                await idem.execute("payment.charge", {}, key="nowhere")
            assert failed.value.retryable and failed.value.attempts == 2

    asyncio.run(scenario())
