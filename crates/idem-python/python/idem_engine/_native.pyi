"""The Rust half of idem_engine (PyO3). Use the package's wrappers: IdempotencyMiddleware,
idempotent, idempotent_function."""

from typing import Awaitable, List, Literal, Optional, Sequence, Tuple, Union

Header = Tuple[bytes, bytes]
Answer = Tuple[int, List[Header], bytes]
Begun = Union[
    Tuple[Literal["acquired"], "Execution"],
    Tuple[Literal["replay"], bytes],
    Tuple[Literal["in_flight"], float],
    Tuple[Literal["outcome_unknown"], None],
    Tuple[Literal["mismatch"], None],
]

class Engine:
    """An engine on one store, opened as `idem proxy --store` opens it: `memory://`, a
    directory (the embedded store: one process only), `postgres://…`, `redis://…`,
    `redis+cluster://…`, `rediss://…`. Durations are in seconds."""

    def __init__(
        self,
        store: str = "memory://",
        *,
        ttl: float = 86400.0,
        lease: float = 30.0,
        wait: Optional[float] = None,
        namespace: Optional[str] = None,
        ca_file: Optional[str] = None,
    ) -> None: ...
    def http_layer(
        self,
        *,
        ttl: Optional[float] = None,
        methods: Optional[Sequence[str]] = None,
        require_key: bool = False,
        key_header: Optional[str] = None,
        uuid_keys: bool = False,
        scope_header: Optional[str] = None,
        scope_cookie: Optional[str] = None,
        canonical_json: bool = False,
        mismatch_status: int = 422,
        max_request_body: Optional[int] = None,
        max_stored_response: Optional[int] = None,
        store_server_errors: bool = True,
        transient_statuses: Optional[Sequence[int]] = None,
    ) -> "HttpLayer": ...
    def begin_call(
        self,
        name: str,
        input: bytes,
        *,
        key: Optional[str] = None,
        key_from: Optional[str] = None,
        scope: Optional[bytes] = None,
        ttl: Optional[float] = None,
    ) -> Awaitable[Begun]: ...

class HttpLayer:
    """The gateway's HTTP layer with a Python handler."""

    def exchange(self, method: str, target: str, headers: Sequence[Header], body: bytes) -> "Exchange": ...

class Exchange:
    """One request through the layer."""

    def anext_step(self) -> Awaitable[Union[Tuple[Literal["run"], bytes], Tuple[Literal["done"], Answer]]]: ...
    def respond(self, status: int, headers: Sequence[Header], body: bytes) -> None: ...

class Execution:
    """An idempotent function's key, owned while it runs."""

    def acomplete(self, output: Optional[bytes]) -> Awaitable[None]: ...
    def arelease(self) -> Awaitable[None]: ...
    def complete(self, output: Optional[bytes]) -> None: ...
    def release(self) -> None: ...

def begin_call_blocking(
    engine: Engine,
    name: str,
    input: bytes,
    *,
    key: Optional[str] = None,
    key_from: Optional[str] = None,
    scope: Optional[bytes] = None,
    ttl: Optional[float] = None,
) -> Begun: ...
