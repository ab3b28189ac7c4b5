"""IdempotencyMiddleware and @idempotent on FastAPI apps: the gateway's HTTP semantics, on
every store."""

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel

from idem_engine import Engine, IdempotencyMiddleware, idempotent


def todo_app(engine, **options):
    app = FastAPI()
    created = []

    @app.post("/todos", status_code=201)
    async def create(todo: dict):
        created.append(todo)
        return {"id": len(created), **todo}

    @app.get("/todos")
    async def listing():
        return created

    @app.delete("/todos/{todo_id}", status_code=204)
    async def delete(todo_id: int):
        return None

    app.add_middleware(IdempotencyMiddleware, engine=engine, **options)
    return app, created


def client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


def test_a_retried_post_creates_one_todo_and_replays_it(store_url, unique):
    app, created = todo_app(Engine(store_url))

    async def scenario():
        async with client(app) as http:
            first = await http.post("/todos", json={"title": "milk"}, headers={"Idempotency-Key": unique})
            again = await http.post("/todos", json={"title": "milk"}, headers={"Idempotency-Key": unique})
            assert first.status_code == again.status_code == 201
            assert first.json() == again.json() == {"id": 1, "title": "milk"}
            assert first.headers["x-idempotent-replayed"] == "false"
            assert again.headers["x-idempotent-replayed"] == "true"
            other = await http.post("/todos", json={"title": "eggs"}, headers={"Idempotency-Key": unique})
            assert other.status_code == 422
            assert other.headers["content-type"] == "application/problem+json"
            assert other.json()["code"] == "idempotency_key_mismatch"
            bad = await http.post("/todos", json={"title": "x"}, headers={"Idempotency-Key": ""})
            assert bad.status_code == 400
            assert (await http.get("/todos")).status_code == 200
            for _ in range(2):
                assert (await http.delete("/todos/1")).status_code == 204

    asyncio.run(scenario())
    assert len(created) == 1


def test_concurrent_duplicates_run_once(unique):
    engine = Engine("memory://", wait=5.0)
    app = FastAPI()
    runs = []

    @app.post("/charges")
    async def charge():
        runs.append(1)
        await asyncio.sleep(0.2)
        return {"charge": len(runs)}

    app.add_middleware(IdempotencyMiddleware, engine=engine)

    async def scenario():
        async with client(app) as http:
            answers = await asyncio.gather(
                *[http.post("/charges", json={}, headers={"Idempotency-Key": unique}) for _ in range(10)]
            )
        assert {answer.status_code for answer in answers} == {200}
        assert {answer.text for answer in answers} == {'{"charge":1}'}

    asyncio.run(scenario())
    assert len(runs) == 1


class BookingRequest(BaseModel):
    service_id: str
    customer_name: str
    date: str
    time: str


def test_the_booking_scenario_as_written(store_url, unique):
    app = FastAPI()
    bookings = []
    engine = Engine(store_url)

    @app.post("/bookings", status_code=201)
    @idempotent(ttl_seconds=3600, engine=engine)
    async def create_booking(booking: BookingRequest, request: Request):
        bookings.append(booking)
        return {"booking_id": f"b-{len(bookings)}", **booking.model_dump()}

    body = {"service_id": "service_123", "customer_name": "John Doe", "date": "2025-08-07", "time": "10:00"}

    async def scenario():
        async with client(app) as http:
            first = await http.post("/bookings", json=body, headers={"Idempotency-Key": unique})
            retry = await http.post("/bookings", json=body, headers={"Idempotency-Key": unique})
            assert first.status_code == retry.status_code == 201
            assert first.json() == retry.json()
            assert retry.headers["x-idempotent-replayed"] == "true"
            moved = await http.post("/bookings", json={**body, "time": "11:00"}, headers={"Idempotency-Key": unique})
            assert moved.status_code == 422
            unkeyed = await http.post("/bookings", json=body)
            assert unkeyed.status_code == 201

    asyncio.run(scenario())
    assert len(bookings) == 2, "the keyed booking once, the unkeyed one once"


def test_the_decorator_needs_the_request():
    with pytest.raises(TypeError, match="request: Request"):

        @idempotent(ttl_seconds=60)
        async def endpoint(booking: dict):
            return booking


def test_a_client_that_hangs_up_mid_body_runs_nothing(unique):
    app, created = todo_app(Engine("memory://"))
    middleware = IdempotencyMiddleware(app, engine=Engine("memory://"))
    messages = [
        {"type": "http.request", "body": b'{"title": "hal', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive():
        return messages.pop(0)

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "method": "POST", "path": "/todos", "raw_path": b"/todos", "query_string": b"",
        "headers": [(b"idempotency-key", unique.encode()), (b"content-type", b"application/json")],
    }
    asyncio.run(middleware(scope, receive, send))
    assert not created and not sent


def test_an_http_exception_is_answered_and_replayed_as_fastapi_answers_it(unique):
    from fastapi import HTTPException

    app = FastAPI()
    runs = []

    class UserOut(BaseModel):
        name: str

    @app.post("/declines")
    @idempotent(engine=Engine("memory://"))
    async def decline(request: Request):
        runs.append(1)
        raise HTTPException(status_code=402, detail="card declined")

    @app.post("/users", status_code=201, response_model=UserOut)
    @idempotent(engine=Engine("memory://"))
    async def create_user(request: Request):
        return {"name": "ada", "password_hash": "secret"}

    async def scenario():
        async with client(app) as http:
            for _ in range(2):
                answer = await http.post("/declines", headers={"Idempotency-Key": unique})
                assert answer.status_code == 402
                assert answer.json() == {"detail": "card declined"}
            user = await http.post("/users", headers={"Idempotency-Key": unique})
            assert user.status_code == 201
            assert user.json() == {"name": "ada"}, "response_model filters as FastAPI does"

    asyncio.run(scenario())
    assert len(runs) == 1


def test_the_middleware_and_the_decorator_together_run_once(unique):
    app = FastAPI()
    runs = []

    @app.post("/both")
    @idempotent(engine=Engine("memory://"))
    async def both(request: Request):
        runs.append(1)
        return {"runs": len(runs)}

    app.add_middleware(IdempotencyMiddleware, engine=Engine("memory://"))

    async def scenario():
        async with client(app) as http:
            first = await http.post("/both", headers={"Idempotency-Key": unique})
            again = await http.post("/both", headers={"Idempotency-Key": unique})
            assert first.status_code == again.status_code == 200
            assert again.headers["x-idempotent-replayed"] == "true"

    asyncio.run(scenario())
    assert runs == [1]


def test_a_background_task_failing_after_the_answer_keeps_the_answer(unique):
    from fastapi import BackgroundTasks

    app = FastAPI()
    runs = []

    def fails():
        raise RuntimeError("the e-mail server is down")

    @app.post("/orders", status_code=201)
    async def order(background: BackgroundTasks):
        runs.append(1)
        background.add_task(fails)
        return {"order": 1}

    app.add_middleware(IdempotencyMiddleware, engine=Engine("memory://"))

    async def scenario():
        async with client(app) as http:
            first = await http.post("/orders", headers={"Idempotency-Key": unique})
            again = await http.post("/orders", headers={"Idempotency-Key": unique})
            assert first.status_code == again.status_code == 201
            assert again.json() == {"order": 1}

    asyncio.run(scenario())
    assert runs == [1]
