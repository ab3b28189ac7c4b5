"""Seed 002's todo API, as its FastAPI authors wrote it, made idempotent by idem-engine:
`POST /todos` with an `Idempotency-Key` creates one todo however often it is retried, and
`DELETE /todos/{id}` answers 204 every time (idempotent by design, so it needs no key).

Run: `IDEM_STORE=postgres://postgres@127.0.0.1/test uvicorn app:app --workers 4`.
"""

import itertools
import os

from fastapi import FastAPI, Response
from pydantic import BaseModel

from idem_engine import Engine, IdempotencyMiddleware

app = FastAPI(title="todos")

# The todos themselves live in this process, as in the seed; the idempotency records in
# the shared store. (`created` in each response tells the tests which process ran it.)
todos: dict = {}
ids = itertools.count(1)


class TodoIn(BaseModel):
    title: str
    done: bool = False


@app.post("/todos", status_code=201)
async def create_todo(todo: TodoIn):
    todo_id = next(ids)
    todos[todo_id] = {"id": todo_id, **todo.model_dump(), "created_by": os.getpid()}
    effects = os.environ.get("TODOS_EFFECTS")
    if effects:
        with open(effects, "a") as log:
            log.write(f"{todo.title}\n")
    return todos[todo_id]


@app.get("/todos")
async def list_todos():
    return list(todos.values())


@app.delete("/todos/{todo_id}", status_code=204)
async def delete_todo(todo_id: int):
    todos.pop(todo_id, None)
    return Response(status_code=204)


app.add_middleware(
    IdempotencyMiddleware,
    engine=Engine(os.environ.get("IDEM_STORE", "memory://"), wait=10.0),
)

