"""The todo API's scenario, in process and with three uvicorn workers on PostgreSQL and
Redis (IDEM_TEST_POSTGRES_URL, IDEM_TEST_REDIS_URL; the local servers by default)."""

import asyncio
import sys
import uuid
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastapi_workers import STORES, bursts, workers  # noqa: E402


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


@pytest.mark.parametrize("store", list(STORES.values()), ids=list(STORES))
def test_duplicates_on_several_workers_create_one_todo_each(store, tmp_path):
    effects = tmp_path / "effects"
    with workers(Path(__file__).parent, 3, {"IDEM_STORE": store, "TODOS_EFFECTS": str(effects)}) as url:

        def send(client, run):
            return [
                client.post("/todos", json={"title": f"{run}-{n}"}, headers={"Idempotency-Key": f"{run}-{n}"})
                for n in range(4)
                for _ in range(6)
            ]

        def check(run, answers):
            assert {answer.status_code for answer in answers} == {201}
            created = [line for line in effects.read_text().split() if line.startswith(run)]
            assert sorted(created) == sorted(f"{run}-{n}" for n in range(4)), "one todo per key"

        bursts(url, send, check)
