"""The Python client of ``idem serve`` (the coordination API): the TypeScript and Rust SDKs'
retry discipline, for the language the coordination scenario's users write.

- :meth:`CoordinationClient.execute`: ``idem serve`` runs the registered operation at most
  once for the key and every call with that key gets its result.
- :meth:`~CoordinationClient.begin`, :meth:`~CoordinationClient.renew`,
  :meth:`~CoordinationClient.complete`, :meth:`~CoordinationClient.release`,
  :meth:`~CoordinationClient.status`: run the operation yourself while idem holds the key.

Every call is sent again, with the same key and body, after a network error, a timeout, a
503 or a 5xx without an error document (and ``execute`` while the first execution still
runs: 202), up to ``retries`` times, waiting ``Retry-After`` or an exponential backoff with
full jitter. Anything else raises :class:`IdempotencyError` with idem's ``code`` and its
``retry`` advice (``same_key``, ``new_key`` or ``never``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union
from urllib.parse import quote

import httpx

__all__ = [
    "CoordinationClient",
    "IdempotencyError",
    "Acquired",
    "Completed",
    "Processing",
    "Absent",
]

EXECUTE = "/v1/idempotency/execute"
RECORDS = "/v1/idempotency/records"


class IdempotencyError(Exception):
    """A call that did not succeed: idem's error document's fields, when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        key: Optional[str] = None,
        status: Optional[int] = None,
        code: Optional[str] = None,
        retry: Optional[str] = None,
        attempts: int = 1,
        retryable: bool = False,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.status = status
        self.code = code
        self.retry = retry
        self.attempts = attempts
        self.retryable = retryable
        self.body = body


@dataclass(frozen=True)
class Acquired:
    """``begin`` took the key: run the operation, then ``complete`` (or ``release``)."""

    key: str
    lease_token: str
    lease_expires_at: float
    lease_ms: float


@dataclass(frozen=True)
class Completed:
    """The operation completed earlier: its result."""

    key: str
    result: Any


@dataclass(frozen=True)
class Processing:
    """Another caller holds the key; look again after ``retry_after`` seconds."""

    key: str
    retry_after: Optional[float]


@dataclass(frozen=True)
class Absent:
    """No record for the key (never begun, released, or expired)."""

    key: str


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _document(response: httpx.Response) -> dict:
    if response.status_code < 400:
        return {}
    try:
        body = response.json()
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    nested = body.get("error")
    return nested if isinstance(nested, dict) and "code" in nested else body


def _token(lease_token: str) -> str:
    if not isinstance(lease_token, str) or not lease_token.isdigit():
        raise TypeError("lease_token must be the decimal string begin() returned")
    return lease_token


class CoordinationClient:
    """An ``idem serve`` client at ``base_url`` (``http://127.0.0.1:8081``). Use it as an
    async context manager, or call :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        *,
        retries: int = 4,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        timeout: float = 35.0,
        headers: Optional[dict] = None,
        generate_key: Callable[[], str] = lambda: str(uuid.uuid4()),
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        if retries < 0 or base_delay < 0 or max_delay < 0:
            raise ValueError("retries, base_delay and max_delay must not be negative")
        self._retries = retries
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._generate_key = generate_key
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=headers, transport=transport
        )

    async def __aenter__(self) -> "CoordinationClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections."""
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        key: Optional[str],
        body: Any,
        again: Callable[[httpx.Response], bool],
    ) -> tuple:
        """Sends until an answer that is not worth sending again, or the retries run out:
        ``(response or None, attempts, error, exhausted)``."""
        headers = {"idempotency-key": key} if key is not None else {}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        attempts = 0
        while True:
            attempts += 1
            response, error = None, None
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as failure:
                error = failure
            retry = error is not None or again(response)
            if not retry or attempts > self._retries:
                return response, attempts, error, retry
            hinted = _retry_after(response.headers.get("retry-after")) if response is not None else None
            delay = (
                min(hinted, self._max_delay)
                if hinted is not None
                else random.uniform(0, min(self._max_delay, self._base_delay * 2 ** (attempts - 1)))
            )
            await asyncio.sleep(delay)

    @staticmethod
    def _transient(response: httpx.Response) -> bool:
        if response.status_code < 500:
            return False
        code = _document(response).get("code")
        return response.status_code == 503 or code is None or code == "OPERATION_UNREACHABLE"

    def _failure(self, what: str, key: Optional[str], end: tuple) -> IdempotencyError:
        response, attempts, error, exhausted = end
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if response is None:
            return IdempotencyError(
                f"{what}: no answer after {tries} ({error}); retry later with the same key",
                key=key,
                attempts=attempts,
                retryable=True,
            )
        document = _document(response)
        code = document.get("code")
        message = document.get("message") or document.get("detail")
        detail = f"HTTP {response.status_code}" + (f" {code}: {message}" if code else "")
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return IdempotencyError(
            f"{what}: {detail} (after {tries})",
            key=key,
            status=response.status_code,
            code=code,
            retry=document.get("retry"),
            attempts=attempts,
            retryable=exhausted,
            body=body,
        )

    async def execute(self, operation: str, payload: Any, *, key: Optional[str] = None) -> Any:
        """Runs ``operation`` with ``payload`` at most once for ``key`` (a new UUID when
        none is given: pass your own to retry across processes) and answers its result.
        Retries while the first execution runs (202) and after transient failures."""
        key = key or self._generate_key()
        end = await self._call(
            "POST",
            EXECUTE,
            key=key,
            body={"operation": operation, "payload": payload},
            again=lambda response: response.status_code == 202 or self._transient(response),
        )
        response, _, _, exhausted = end
        if response is not None and response.status_code == 200 and not exhausted:
            return response.json()["result"]
        raise self._failure(f"execute {operation}", key, end)

    async def begin(
        self, operation: str, payload: Any, *, key: Optional[str] = None
    ) -> Union[Acquired, Completed, Processing]:
        """Takes ``key`` to run ``operation`` yourself: :class:`Acquired` (run it, renew
        the lease, then complete or release), :class:`Completed` (its result), or
        :class:`Processing` (another caller holds it)."""
        key = key or self._generate_key()
        end = await self._call(
            "POST", RECORDS, key=key, body={"operation": operation, "payload": payload}, again=self._transient
        )
        response, _, _, exhausted = end
        if response is not None and not exhausted:
            if response.status_code == 201:
                body = response.json()
                return Acquired(key, str(body["lease_token"]), float(body["lease_expires_at"]), float(body["lease_ms"]))
            if response.status_code == 200:
                return Completed(key, response.json()["result"])
            if response.status_code == 202:
                return Processing(key, _retry_after(response.headers.get("retry-after")))
        raise self._failure(f"begin {operation}", key, end)

    async def renew(self, key: str, lease_token: str) -> float:
        """Extends the lease; answers the new lease's length in milliseconds."""
        end = await self._call(
            "POST", f"{RECORDS}/{quote(key, safe='')}/lease", key=None, body={"lease_token": _token(lease_token)}, again=self._transient
        )
        response, _, _, exhausted = end
        if response is not None and response.status_code == 200 and not exhausted:
            return float(response.json()["lease_ms"])
        raise self._failure("renew", key, end)

    async def complete(self, key: str, lease_token: str, result: Any) -> Any:
        """Stores ``result`` for every later call with ``key``. A completion whose answer
        was lost and that was retried is recognised (the record holds this result)."""
        end = await self._call(
            "PUT",
            f"{RECORDS}/{quote(key, safe='')}",
            key=None,
            body={"lease_token": _token(lease_token), "result": result},
            again=self._transient,
        )
        response, attempts, _, exhausted = end
        if response is not None and response.status_code == 200 and not exhausted:
            return response.json()["result"]
        if attempts > 1 and response is not None and _document(response).get("code") == "LEASE_LOST":
            now = await self.status(key)
            if isinstance(now, Completed) and now.result == json.loads(json.dumps(result)):
                return now.result
        raise self._failure("complete", key, end)

    async def release(self, key: str, lease_token: str) -> None:
        """Deletes the record: nothing took effect, the next call with ``key`` runs."""
        token = quote(_token(lease_token), safe="")
        end = await self._call(
            "DELETE", f"{RECORDS}/{quote(key, safe='')}?lease_token={token}", key=None, body=None, again=self._transient
        )
        response, attempts, _, exhausted = end
        if response is not None and response.status_code == 204 and not exhausted:
            return
        if attempts > 1 and response is not None and _document(response).get("code") == "LEASE_LOST":
            if isinstance(await self.status(key), Absent):
                return
        raise self._failure("release", key, end)

    async def status(self, key: str) -> Union[Completed, Processing, Absent]:
        """What idem holds for ``key`` now."""
        end = await self._call("GET", f"{RECORDS}/{quote(key, safe='')}", key=None, body=None, again=self._transient)
        response, _, _, exhausted = end
        if response is not None and not exhausted:
            if response.status_code == 200:
                return Completed(key, response.json()["result"])
            if response.status_code == 202:
                return Processing(key, _retry_after(response.headers.get("retry-after")))
            if response.status_code == 404 and _document(response).get("code") == "NOT_FOUND":
                return Absent(key)
        raise self._failure("status", key, end)
