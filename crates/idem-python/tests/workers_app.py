"""The app `test_processes.py` serves with several uvicorn workers: each execution appends a
line to $IDEM_TEST_EFFECTS, so the test counts executions across processes."""

import asyncio
import os

from fastapi import FastAPI

from idem_engine import Engine, IdempotencyMiddleware

app = FastAPI()


@app.post("/charges", status_code=201)
async def charge(body: dict):
    await asyncio.sleep(0.05)
    with open(os.environ["IDEM_TEST_EFFECTS"], "a") as effects:
        effects.write(f"{body['order']} {os.getpid()}\n")
    return {"order": body["order"], "worker": os.getpid()}


app.add_middleware(IdempotencyMiddleware, engine=Engine(os.environ["IDEM_STORE"], wait=10.0))


class WorkerHeader:
    """Outermost: names the worker that answered, replay or not, so the test can tell the
    duplicates of one key reached several processes."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def named(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-worker", str(os.getpid()).encode())]}
            await send(message)

        await self.app(scope, receive, named)


app.add_middleware(WorkerHeader)
