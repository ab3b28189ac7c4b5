"""The booking API's scenario, in process and with several uvicorn workers on PostgreSQL
and Redis (IDEM_TEST_POSTGRES_URL, IDEM_TEST_REDIS_URL; the local servers by default)."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

STORES = {
    "postgres": os.environ.get("IDEM_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"),
    "redis": os.environ.get("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
}
BOOKING = {"service_id": "service_123", "customer_name": "John Doe", "date": "2025-08-07", "time": "10:00"}


def test_a_booking_is_replayed_and_a_changed_one_refused():
    from app import app

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bookings") as client:
            key = {"Idempotency-Key": str(uuid.uuid4())}
            first = await client.post("/bookings", json=BOOKING, headers=key)
            retry = await client.post("/bookings", json=BOOKING, headers=key)
            assert first.status_code == retry.status_code == 201
            assert first.json() == retry.json()
            assert retry.headers["x-idempotent-replayed"] == "true"
            moved = await client.post("/bookings", json={**BOOKING, "time": "11:00"}, headers=key)
            assert moved.status_code == 422
            assert moved.json()["code"] == "idempotency_key_mismatch"

    asyncio.run(scenario())


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("store", list(STORES.values()), ids=list(STORES))
def test_duplicates_on_several_workers_book_once(store, tmp_path):
    effects = tmp_path / "effects"
    effects.touch()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--workers", "3", "--port", str(port), "--log-level", "warning"],
        cwd=Path(__file__).parent,
        env={**os.environ, "IDEM_STORE": store, "BOOKINGS_EFFECTS": str(effects)},
    )
    run = uuid.uuid4().hex
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)

        async def burst():
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
                return await asyncio.gather(*[
                    client.post("/bookings", json={**BOOKING, "customer_name": f"{run}-{n}"}, headers={"Idempotency-Key": f"{run}-{n}"})
                    for n in range(4) for _ in range(6)
                ])

        answers = asyncio.run(burst())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert {answer.status_code for answer in answers} == {201}
    assert sorted(effects.read_text().split()) == sorted(f"{run}-{n}" for n in range(4))
    by_key = {}
    for answer in answers:
        by_key.setdefault(answer.json()["customer_name"], set()).add(answer.json()["booking_id"])
    assert all(len(ids) == 1 for ids in by_key.values()), "every duplicate got the first booking"
