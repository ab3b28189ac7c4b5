"""The booking endpoint four ways, for scripts/bench-python (BENCH_VARIANT picks one):

- `plain`: no idempotency (the baseline);
- `decorator`: `@idempotent(ttl_seconds=3600)` (idem-engine) on Redis;
- `middleware`: idem-engine's `IdempotencyMiddleware` on Redis;
- `asgi-idempotency-header`: snok's pure-Python middleware (PyPI
  `asgi-idempotency-header`) with its Redis backend.
"""

import itertools
import os

from fastapi import FastAPI, Request
from pydantic import BaseModel

variant = os.environ.get("BENCH_VARIANT", "plain")
redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
app = FastAPI()
numbers = itertools.count(1)


class BookingRequest(BaseModel):
    service_id: str
    customer_name: str
    date: str
    time: str


async def book(booking: BookingRequest):
    return {"booking_id": next(numbers), **booking.model_dump()}


if variant == "decorator":
    from idem_engine import Engine, idempotent

    engine = Engine(redis_url, namespace="bench")

    @app.post("/bookings", status_code=201)
    @idempotent(ttl_seconds=3600, engine=engine)
    async def create_booking(booking: BookingRequest, request: Request):
        return await book(booking)

else:

    @app.post("/bookings", status_code=201)
    async def create_booking(booking: BookingRequest):
        return await book(booking)


if variant == "middleware":
    from idem_engine import Engine, IdempotencyMiddleware

    app.add_middleware(IdempotencyMiddleware, engine=Engine(redis_url, namespace="bench"), ttl=3600.0)
elif variant == "asgi-idempotency-header":
    from idempotency_header_middleware import IdempotencyHeaderMiddleware
    from idempotency_header_middleware.backends.redis import RedisBackend
    from redis.asyncio import Redis

    app.add_middleware(
        IdempotencyHeaderMiddleware,
        backend=RedisBackend(redis=Redis.from_url(redis_url), expiry=3600),
        applicable_methods=["POST"],
    )
