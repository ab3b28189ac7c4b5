"""The booking API's scenario, in process and with three uvicorn workers on PostgreSQL and
Redis (IDEM_TEST_POSTGRES_URL, IDEM_TEST_REDIS_URL; the local servers by default)."""

import asyncio
import sys
import uuid
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastapi_workers import STORES, bursts, workers  # noqa: E402

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


@pytest.mark.parametrize("store", list(STORES.values()), ids=list(STORES))
def test_duplicates_on_several_workers_book_once(store, tmp_path):
    effects = tmp_path / "effects"
    with workers(Path(__file__).parent, 3, {"IDEM_STORE": store, "BOOKINGS_EFFECTS": str(effects)}) as url:

        def send(client, run):
            return [
                client.post("/bookings", json={**BOOKING, "customer_name": f"{run}-{n}"}, headers={"Idempotency-Key": f"{run}-{n}"})
                for n in range(4)
                for _ in range(6)
            ]

        def check(run, answers):
            assert {answer.status_code for answer in answers} == {201}
            booked = [line for line in effects.read_text().split() if line.startswith(run)]
            assert sorted(booked) == sorted(f"{run}-{n}" for n in range(4)), "one booking per key"
            by_key = {}
            for answer in answers:
                by_key.setdefault(answer.json()["customer_name"], set()).add(answer.json()["booking_id"])
            assert all(len(ids) == 1 for ids in by_key.values()), "every duplicate got the first booking"

        bursts(url, send, check)
