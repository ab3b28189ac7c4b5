"""Stores for the tests: every test that takes `store_url` runs on memory, PostgreSQL and
Redis (IDEM_TEST_POSTGRES_URL, IDEM_TEST_REDIS_URL; the local servers by default). A
missing server fails the test, saying which: scripts/test starts them."""

import os
import uuid

import pytest

POSTGRES = os.environ.get("IDEM_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("IDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379")


@pytest.fixture(params=["memory", "postgres", "redis"])
def store_url(request):
    return {"memory": "memory://", "postgres": POSTGRES, "redis": REDIS}[request.param]


@pytest.fixture
def unique():
    """A prefix no other run used, for keys."""
    return uuid.uuid4().hex
