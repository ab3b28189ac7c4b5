"""At-most-once execution for Python, on idem's Rust engine.

- :class:`Engine` opens a store (``memory://``, a directory for the embedded store,
  ``postgres://…``, ``redis://…``, ``redis+cluster://…``, ``rediss://…``) exactly as
  ``idem proxy --store`` does.
- :class:`IdempotencyMiddleware` is an ASGI middleware (Starlette, FastAPI) that honours
  ``Idempotency-Key`` with the gateway's own HTTP layer: same key rules, scopes,
  fingerprints, problem+json answers, replay header and records.
- :func:`idempotent` makes one FastAPI endpoint idempotent:
  ``@idempotent(ttl_seconds=3600)``.
- :func:`idempotent_function` runs a plain or async function at most once per key, its
  JSON result replayed to every retry (the records of Rust's ``Engine::run``).

Which store: several worker processes (``uvicorn --workers 4``, gunicorn) must share
PostgreSQL or Redis. The memory store is one process's (each worker would have its own
records, and a retry landing on another worker would run again) and the embedded store's
directory can be opened by one process only (a second worker fails to start, saying so).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import os
import threading
from typing import Any, Awaitable, Callable, Iterable, Optional, Sequence, TypeVar

from . import _native

__all__ = [
    "Engine",
    "IdempotencyError",
    "InFlight",
    "OutcomeUnknown",
    "Mismatch",
    "IdempotencyMiddleware",
    "idempotent",
    "idempotent_function",
    "configure",
    "default_engine",
]

T = TypeVar("T")

Engine = _native.Engine


class IdempotencyError(Exception):
    """An idempotent function did not run, and has no result to replay."""


class InFlight(IdempotencyError):
    """A call with the same key is running; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"a call with this key is running; retry in {retry_after:.1f}s")
        self.retry_after = retry_after


class OutcomeUnknown(IdempotencyError):
    """A call with this key began and its runner died: it may have taken effect. Nothing ran."""

    def __init__(self) -> None:
        super().__init__("a call with this key began and its outcome is unknown; nothing ran")


class Mismatch(IdempotencyError):
    """The key was used with another input. Nothing ran."""

    def __init__(self) -> None:
        super().__init__("the key was used with another input; nothing ran")


_default: Optional[Engine] = None
_default_lock = threading.Lock()


def configure(store: Optional[str] = None, **options: Any) -> Engine:
    """Sets the engine the decorators use when given none: ``store`` (default: the
    ``IDEM_STORE`` environment variable, else ``memory://``) and the :class:`Engine`'s
    keyword options (``ttl``, ``lease``, ``wait``, ``namespace``, ``ca_file``)."""
    global _default
    engine = Engine(store or os.environ.get("IDEM_STORE", "memory://"), **options)
    with _default_lock:
        _default = engine
    return engine


def default_engine() -> Engine:
    """The engine set by :func:`configure`, opened from ``IDEM_STORE`` on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Engine(os.environ.get("IDEM_STORE", "memory://"))
        return _default


# --- HTTP -----------------------------------------------------------------------------

Scope = dict
Receive = Callable[[], Awaitable[dict]]
# Set in the ASGI scope of a request the middleware handles.
_HANDLED = "idem_engine.handled"
Send = Callable[[dict], Awaitable[None]]


DEFAULT_MAX_REQUEST_BODY = 10 * 1024 * 1024


async def _read_body(receive: Receive, limit: int) -> Optional[bytes]:
    """The whole request body, or ``None`` when the client hung up before sending it all
    (nothing is run for a request that never fully arrived). Reading stops one byte past
    ``limit``: the layer then answers 413."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[: limit + 1]
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _run_app(app: Callable, scope: Scope, body: bytes, client_receive: Receive) -> tuple:
    """Runs the ASGI ``app`` with ``body`` (already read) and collects its whole response;
    after the body, the app hears the real client (a disconnect, say)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await client_receive()

    status: Optional[int] = None
    headers: list = []
    chunks: list = []
    complete = False

    async def send(message: dict) -> None:
        nonlocal status, headers, complete
        if message["type"] == "http.response.start" and status is None:
            status = message["status"]
            headers = [(bytes(name), bytes(value)) for name, value in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            complete = complete or not message.get("more_body", False)

    try:
        await app(scope, receive, send)
    except Exception:
        # Failed after its whole response was sent (a background task, say): that response
        # is what the client got and what took effect; keep it. Before: the caller's 500.
        if status is not None and complete:
            return status, headers, b"".join(chunks)
        raise
    return (status if status is not None else 500), headers, b"".join(chunks)


def _target(scope: Scope) -> str:
    path = scope.get("raw_path") or scope["path"].encode()
    if isinstance(path, bytes):
        path = path.decode("latin-1")
    query = scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


async def _through_layer(layer: Any, scope: Scope, body: bytes, run: Callable[[bytes], Awaitable[tuple]]) -> tuple:
    """One request through the Rust layer: ``run`` is called (at most once) when the layer
    executes; the layer's answer (replayed, refused or executed) comes back."""
    headers = [(bytes(name), bytes(value)) for name, value in scope.get("headers", [])]
    exchange = layer.exchange(scope["method"], _target(scope), headers, body)
    while True:
        kind, value = await exchange.anext_step()
        if kind == "done":
            return value
        try:
            status, response_headers, response_body = await run(value)
        except Exception:
            # The app failed before answering: answer 500, and the layer keeps it as any
            # 5xx (stored by default: it may have taken effect). A cancellation answers
            # nothing; the layer then keeps a 500 all the same, never releasing the key.
            exchange.respond(500, [(b"content-type", b"text/plain")], b"Internal Server Error")
            raise
        exchange.respond(status, response_headers, response_body)


async def _send_answer(send: Send, answer: tuple) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": [(bytes(n), bytes(v)) for n, v in headers]})
    await send({"type": "http.response.body", "body": bytes(body), "more_body": False})


class IdempotencyMiddleware:
    """An ASGI middleware with the gateway's HTTP semantics.

    Covered methods (POST, PUT, PATCH, DELETE by default) carrying ``Idempotency-Key`` run
    the app at most once per key and scope (the ``Authorization`` header, or
    ``scope_header`` / ``scope_cookie``); retries get the first response with
    ``X-Idempotent-Replayed: true``; a key reused for another request gets 422 (or
    ``mismatch_status``), one in flight 409, a bad key 400, all as problem+json. Other
    requests pass through untouched. Keyword options are those of ``idem proxy``:
    ``ttl`` (seconds), ``methods``, ``require_key``, ``key_header``, ``uuid_keys``,
    ``scope_header``, ``scope_cookie``, ``canonical_json``, ``mismatch_status``,
    ``max_request_body``, ``max_stored_response``, ``store_server_errors``,
    ``transient_statuses``.
    """

    def __init__(self, app: Callable, engine: Optional[Engine] = None, **options: Any) -> None:
        self.app = app
        self._engine = engine
        self._options = options
        self._layer: Any = None
        methods = options.get("methods") or ["POST", "PUT", "PATCH", "DELETE"]
        self._methods = {method.upper() for method in methods}
        self._key_header = (options.get("key_header") or "idempotency-key").lower().encode()
        self._require_key = bool(options.get("require_key"))
        self._limit = int(options.get("max_request_body") or DEFAULT_MAX_REQUEST_BODY)

    def _get_layer(self) -> Any:
        if self._layer is None:
            self._layer = (self._engine or default_engine()).http_layer(**self._options)
        return self._layer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() not in self._methods:
            await self.app(scope, receive, send)
            return
        keyed = any(bytes(name).lower() == self._key_header for name, _ in scope.get("headers", []))
        if not keyed and not self._require_key:
            # Nothing to do for it: passed through untouched, streaming and all.
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive, self._limit)
        if body is None:
            return  # the client hung up mid-body: nothing ran, nobody to answer
        # `@idempotent` inside this app leaves the request to this middleware.
        scope = {**scope, _HANDLED: True}
        answer = await _through_layer(
            self._get_layer(), scope, body, lambda body: _run_app(self.app, scope, body, receive)
        )
        await _send_answer(send, answer)


def idempotent(
    ttl_seconds: Optional[float] = None,
    *,
    engine: Optional[Engine] = None,
    **options: Any,
) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Makes one FastAPI endpoint idempotent, below its route decorator::

        @app.post("/bookings", status_code=201)
        @idempotent(ttl_seconds=3600)
        async def create_booking(booking: BookingRequest, request: Request): ...

    The endpoint must take a ``request: Request`` parameter. Its result is answered as
    FastAPI would (a ``Response`` as it is, anything else as JSON with the route's status
    code) and kept for ``ttl_seconds``; other options are :class:`IdempotencyMiddleware`'s.
    """

    def decorate(endpoint: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        from starlette.requests import Request

        parameters = inspect.signature(endpoint).parameters
        request_name = next(
            (name for name, parameter in parameters.items() if parameter.annotation in (Request, "Request")),
            None,
        )
        if request_name is None:
            raise TypeError(
                f"@idempotent needs the endpoint {endpoint.__qualname__} to take a `request: Request` parameter"
            )
        layer_options = dict(options)
        if ttl_seconds is not None:
            layer_options["ttl"] = float(ttl_seconds)
        layer: list = []

        @functools.wraps(endpoint)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            from starlette.concurrency import run_in_threadpool
            from starlette.exceptions import HTTPException
            from starlette.responses import Response

            request: Request = kwargs[request_name]
            if request.scope.get(_HANDLED):
                # The app's IdempotencyMiddleware already handles this request.
                result = endpoint(*args, **kwargs)
                return await result if inspect.isawaitable(result) else result
            if not layer:
                layer.append((engine or default_engine()).http_layer(**layer_options))
            body = await request.body()
            route = request.scope.get("route")

            async def run(_body: bytes) -> tuple:
                try:
                    if inspect.iscoroutinefunction(endpoint):
                        result = await endpoint(*args, **kwargs)
                    else:
                        result = await run_in_threadpool(endpoint, *args, **kwargs)
                except HTTPException as refused:
                    # As FastAPI would answer it: the client's answer, and the one kept.
                    result = _json_response(
                        {"detail": refused.detail}, refused.status_code, getattr(refused, "headers", None)
                    )
                if not isinstance(result, Response):
                    result = _as_route_would(route, result)
                return result.status_code, list(result.raw_headers), bytes(result.body)

            status, headers, answer = await _through_layer(layer[0], request.scope, body, run)
            response = Response(content=bytes(answer), status_code=status)
            response.raw_headers = [(bytes(name), bytes(value)) for name, value in headers]
            return response

        return wrapper

    return decorate


def _json_response(content: Any, status_code: int, headers: Optional[dict] = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(content, status_code=status_code, headers=headers)


def _as_route_would(route: Any, result: Any) -> Any:
    """An endpoint's return value as its FastAPI route answers it: validated and filtered
    by ``response_model`` (its include / exclude / exclude_unset options too), encoded, in
    ``response_class``, with the route's ``status_code``."""
    from fastapi.encoders import jsonable_encoder
    from starlette.responses import JSONResponse

    status_code = getattr(route, "status_code", None) or 200
    model = getattr(route, "response_model", None)
    if model is not None:
        from pydantic import TypeAdapter

        result = TypeAdapter(model).validate_python(
            jsonable_encoder(result) if not hasattr(result, "model_dump") else result,
            from_attributes=True,
        )
    content = jsonable_encoder(
        result,
        include=getattr(route, "response_model_include", None),
        exclude=getattr(route, "response_model_exclude", None),
        by_alias=getattr(route, "response_model_by_alias", True),
        exclude_unset=getattr(route, "response_model_exclude_unset", False),
        exclude_defaults=getattr(route, "response_model_exclude_defaults", False),
        exclude_none=getattr(route, "response_model_exclude_none", False),
    )
    response_class = getattr(route, "response_class", None)
    response_class = getattr(response_class, "value", response_class)
    if not isinstance(response_class, type):
        response_class = JSONResponse
    return response_class(content, status_code=status_code)


# --- Functions --------------------------------------------------------------------------


def _input_of(signature: inspect.Signature, args: Sequence[Any], kwargs: dict) -> bytes:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return json.dumps(bound.arguments, default=_jsonable, sort_keys=True).encode()


def _jsonable(value: Any) -> Any:
    for method in ("model_dump", "dict"):
        if hasattr(value, method):
            return getattr(value, method)()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _replayed(output: bytes) -> Any:
    if not output:
        raise IdempotencyError(
            "this call ran once, and its result could not be kept as JSON: there is nothing to replay"
        )
    return json.loads(output)


def _raise(kind: str, value: Any) -> None:
    if kind == "in_flight":
        raise InFlight(value)
    if kind == "outcome_unknown":
        raise OutcomeUnknown()
    if kind == "mismatch":
        raise Mismatch()


def idempotent_function(
    key: Optional[str] = None,
    *,
    engine: Optional[Engine] = None,
    name: Optional[str] = None,
    ttl: Optional[float] = None,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Runs the decorated function (plain or ``async``) at most once per key, and returns
    the first call's result (JSON) to every later call with the same key and arguments.

    ``key`` is a JSON pointer into the call's arguments by name (``"/message/id"``, or
    ``"/order_id"``); without it the whole arguments are the key. A call with the same key
    and other arguments raises :class:`Mismatch`, one while the first still runs
    :class:`InFlight`, one after a runner died mid-way :class:`OutcomeUnknown`. An
    exception releases the key: the next call runs again.
    """

    def decorate(function: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(function)
        call_name = name or f"{function.__module__}.{function.__qualname__}"

        def begin_options() -> dict:
            return {"key_from": key, "ttl": ttl}

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                runner = engine or default_engine()
                kind, value = await runner.begin_call(call_name, _input_of(signature, args, kwargs), **begin_options())
                if kind == "replay":
                    return _replayed(value)
                _raise(kind, value)
                try:
                    result = await function(*args, **kwargs)
                except Exception:
                    # Failed before any effect (as the contract asks): a retry runs again.
                    # A cancellation or an interrupt is not caught: the key then lapses into
                    # an unknown outcome, never into a second run.
                    await value.arelease()
                    raise
                try:
                    output = json.dumps(result, default=_jsonable).encode()
                except (TypeError, ValueError):
                    # It ran: kept as run, with nothing to replay, rather than run again.
                    await value.acomplete(None)
                    raise
                await value.acomplete(output)
                return result

            return run_async  # type: ignore[return-value]

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            runner = engine or default_engine()
            kind, value = _native.begin_call_blocking(
                runner, call_name, _input_of(signature, args, kwargs), **begin_options()
            )
            if kind == "replay":
                return _replayed(value)
            _raise(kind, value)
            try:
                result = function(*args, **kwargs)
            except Exception:
                value.release()
                raise
            try:
                output = json.dumps(result, default=_jsonable).encode()
            except (TypeError, ValueError):
                value.complete(None)
                raise
            value.complete(output)
            return result

        return run

    return decorate
