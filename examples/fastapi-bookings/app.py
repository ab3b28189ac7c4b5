"""Seed 004's booking API, with the decorator exactly as its authors wrote it, on
idem-engine instead of an in-memory dictionary "to be made persistent":
`@idempotent(ttl_seconds=3600)` on `POST /bookings`.

Run: `IDEM_STORE=redis://127.0.0.1:6379 uvicorn app:app --workers 4`.
"""

import asyncio
import itertools
import os

from fastapi import FastAPI, Request
from pydantic import BaseModel

import idem_engine
from idem_engine import idempotent

# The decorator's engine: IDEM_STORE, shared by every worker when it is PostgreSQL or Redis.
idem_engine.configure(os.environ.get("IDEM_STORE", "memory://"), wait=10.0)

app = FastAPI(title="bookings")
numbers = itertools.count(1)


class BookingRequest(BaseModel):
    service_id: str
    customer_name: str
    date: str
    time: str


@app.post("/bookings", status_code=201)
@idempotent(ttl_seconds=3600)  # 1 hour TTL
async def create_booking(booking: BookingRequest, request: Request):
    number = next(numbers)
    await asyncio.sleep(0.05)  # the booking system's round trip: duplicates overlap it
    effects = os.environ.get("BOOKINGS_EFFECTS")
    if effects:
        with open(effects, "a") as log:
            log.write(f"{booking.customer_name}\n")
    return {"booking_id": f"{os.getpid()}-{number}", **booking.model_dump()}

