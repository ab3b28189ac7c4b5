"""@idempotent_function: plain and async functions run at most once per key, their JSON
result replayed; the key from an argument's member or the whole arguments."""

import asyncio

import pytest

import idem_engine
from idem_engine import Engine, InFlight, Mismatch, idempotent_function


def test_a_redelivered_message_runs_once_and_its_result_is_replayed(store_url, unique):
    engine = Engine(store_url)
    runs = []

    @idempotent_function(key="/message/id", engine=engine)
    def handle(message):
        runs.append(message["id"])
        return {"charged": message["amount"]}

    for _ in range(3):
        assert handle({"id": f"{unique}-1", "amount": 5}) == {"charged": 5}
    assert runs == [f"{unique}-1"]
    with pytest.raises(Mismatch):
        handle({"id": f"{unique}-1", "amount": 6})
    assert handle({"id": f"{unique}-2", "amount": 6}) == {"charged": 6}
    assert len(runs) == 2


def test_an_async_function_runs_once_and_a_failure_lets_the_retry_run(store_url, unique):
    engine = Engine(store_url)
    attempts = []

    @idempotent_function(engine=engine)
    async def send_email(address, subject):
        attempts.append(address)
        if len(attempts) == 1:
            raise ConnectionError("smtp down, nothing sent")
        return f"sent {subject}"

    async def scenario():
        with pytest.raises(ConnectionError):
            await send_email(f"{unique}@example.com", "hi")
        assert await send_email(f"{unique}@example.com", "hi") == "sent hi"
        assert await send_email(f"{unique}@example.com", "hi") == "sent hi"

    asyncio.run(scenario())
    assert len(attempts) == 2, "the failure released the key; the retry ran once"


def test_a_duplicate_while_the_first_runs_is_told_so(unique):
    engine = Engine("memory://")
    started = asyncio.Event

    @idempotent_function(key="/job", engine=engine)
    async def slow(job):
        await asyncio.sleep(0.3)
        return job

    async def scenario():
        first = asyncio.create_task(slow(unique))
        await asyncio.sleep(0.05)
        with pytest.raises(InFlight) as raised:
            await slow(unique)
        assert raised.value.retry_after > 0
        assert await first == unique

    asyncio.run(scenario())


def test_the_default_engine_comes_from_idem_store(monkeypatch, unique):
    monkeypatch.setenv("IDEM_STORE", "memory://")
    idem_engine.configure()

    @idempotent_function()
    def once(value):
        return [value, unique]

    assert once(1) == once(1) == [1, unique]


def test_a_bad_store_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown store scheme"):
        Engine("mysql://db")


def test_a_result_that_is_not_json_is_kept_as_run_and_never_run_again(unique):
    engine = Engine("memory://")
    runs = []

    @idempotent_function(engine=engine)
    def opaque(value):
        runs.append(value)
        return {1, 2}

    with pytest.raises(TypeError):
        opaque(unique)
    with pytest.raises(idem_engine.IdempotencyError, match="nothing to replay"):
        opaque(unique)
    assert runs == [unique]


def test_the_embedded_store_keeps_records_and_refuses_a_second_process(tmp_path, unique):
    import subprocess
    import sys

    directory = str(tmp_path / "idem-data")
    engine = Engine(directory)
    runs = []

    @idempotent_function(engine=engine)
    def once(value):
        runs.append(value)
        return value

    assert once(unique) == once(unique) == unique
    assert runs == [unique]
    # A second process (a second uvicorn worker, say) cannot open the directory, and says so.
    second = subprocess.run(
        [sys.executable, "-c", f"import idem_engine; idem_engine.Engine({directory!r})"],
        capture_output=True,
        text=True,
    )
    assert second.returncode != 0
    assert "is another idem process using it?" in second.stderr, second.stderr
