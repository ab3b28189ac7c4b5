"""The todo API's scenario, in process and with several uvicorn workers on PostgreSQL and
Redis (IDEM_TEST_POSTGRES_URL, IDEM_TEST_REDIS_URL; the local servers by default)."""

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


def test_a_retried_post_creates_one_todo_and_delete_is_always_204():
    from app import app, todos

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://todos") as client:
            key = {"Idempotency-Key": str(uuid.uuid4())}
            first = await client.post("/todos", json={"title": "milk"}, headers=key)
            retry = await client.post("/todos", json={"title": "milk"}, headers=key)
            assert first.status_code == retry.status_code == 201
            assert first.json() == retry.json()
            assert retry.headers["x-idempotent-replayed"] == "true"
            for _ in range(3):
                assert (await client.delete(f"/todos/{first.json()['id']}")).status_code == 204

    asyncio.run(scenario())
    assert not todos


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("store", list(STORES.values()), ids=list(STORES))
def test_duplicates_on_several_workers_create_one_todo_each(store, tmp_path):
    effects = tmp_path / "effects"
    effects.touch()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--workers", "3", "--port", str(port), "--log-level", "warning"],
        cwd=Path(__file__).parent,
        env={**os.environ, "IDEM_STORE": store, "TODOS_EFFECTS": str(effects)},
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
            limits = httpx.Limits(max_keepalive_connections=0)  # each request on its own connection
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
                return await asyncio.gather(*[
                    client.post("/todos", json={"title": f"{run}-{n}"}, headers={"Idempotency-Key": f"{run}-{n}"})
                    for n in range(4) for _ in range(6)
                ])

        answers = asyncio.run(burst())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert {answer.status_code for answer in answers} == {201}
    assert sorted(effects.read_text().split()) == sorted(f"{run}-{n}" for n in range(4))
