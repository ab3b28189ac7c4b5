// IdempotentClient against the real `idem proxy`.

import assert from "node:assert/strict";
import test from "node:test";

import { IdempotencyError, IdempotentClient } from "../dist/index.js";
import {
  UUID_V4,
  recordingFetch,
  startFront,
  startIdem,
  startUpstream,
  unusedPort,
} from "./support/harness.js";

/** `POST /charges` creates a new charge on every execution: idem must make it once. */
const charges = {
  "POST /charges": (_req, { json, count }) => ({ status: 201, json: { id: `ch_${count}`, amount: json?.amount } }),
};

async function proxyFor(t, upstreamUrl, ...flags) {
  return startIdem(t, "proxy", ["--upstream", upstreamUrl, ...flags]);
}

test("a dropped connection is retried with the same key: executed once, the retry is a replay", async (t) => {
  const upstream = await startUpstream(t, charges);
  const idem = await proxyFor(t, upstream.url);
  const front = await startFront(t, idem.url, { mode: "drop" });
  const client = new IdempotentClient({ baseUrl: front.url, baseDelayMs: 10 });

  const response = await client.post("/charges", { body: { amount: 1000 } });

  assert.equal(front.spoiled(), 1);
  assert.equal(response.status, 201);
  assert.deepEqual(response.body, { id: "ch_1", amount: 1000 });
  assert.equal(response.replayed, true, "the first answer was lost; the retry got the stored one");
  assert.equal(response.attempts, 2);
  assert.match(response.key, UUID_V4);
  assert.equal(upstream.count("POST /charges"), 1, "executed once");
  assert.equal(upstream.hits[0].key, response.key, "the upstream saw the same key");
});

test("a 503 from a flaky front is retried with the same key: executed once, the retry is a replay", async (t) => {
  const upstream = await startUpstream(t, charges);
  const idem = await proxyFor(t, upstream.url);
  const front = await startFront(t, idem.url, { mode: "503", faults: 2 });
  const { fetch, calls } = recordingFetch();
  const client = new IdempotentClient({ baseUrl: front.url, baseDelayMs: 10, fetch });

  const response = await client.post("/charges", { body: { amount: 250 } });

  assert.equal(response.status, 201);
  assert.deepEqual(response.body, { id: "ch_1", amount: 250 });
  assert.equal(response.replayed, true);
  assert.equal(response.attempts, 3);
  assert.equal(calls.length, 3);
  assert.ok(calls.every((call) => call.key === response.key), "one key on every retry");
  assert.equal(upstream.count("POST /charges"), 1);
});

test("409 in progress waits for Retry-After, then gets the first request's answer replayed", async (t) => {
  const upstream = await startUpstream(t, {
    "POST /slow": async (_req, { count, sleep }) => {
      await sleep(600);
      return { status: 201, json: { id: `slow_${count}` } };
    },
  });
  // A 1 s lease makes idem answer `Retry-After: 1` (it is the lease's remaining time, capped at 5 s);
  // the upstream must answer within the lease, and the 600 ms upstream does.
  const idem = await proxyFor(t, upstream.url, "--lease", "1s", "--upstream-timeout", "900ms");
  const { fetch, calls } = recordingFetch();
  const client = new IdempotentClient({ baseUrl: idem.url, baseDelayMs: 10, fetch });
  const key = "order-42-attempt-1";

  const arrived = upstream.nextArrival();
  const first = client.post("/slow", { key, body: { order: 42 } });
  await arrived;
  const started = Date.now();
  const second = await client.post("/slow", { key, body: { order: 42 } });
  const waited = Date.now() - started;

  assert.equal(second.status, 201);
  assert.deepEqual(second.body, { id: "slow_1" });
  assert.equal(second.replayed, true);
  assert.equal(second.attempts, 2, "one 409, then the replay: no tight retry loop");
  assert.ok(waited >= 900, `waited ${waited} ms, Retry-After said 1 s`);
  const original = await first;
  assert.equal(original.replayed, false);
  assert.deepEqual(original.body, { id: "slow_1" });
  assert.equal(upstream.count("POST /slow"), 1);
  assert.ok(calls.every((call) => call.key === key));
});

test("4xx answers are final: a 422 mismatch and a 400 invalid key are not retried", async (t) => {
  const upstream = await startUpstream(t, charges);
  const idem = await proxyFor(t, upstream.url);
  const client = new IdempotentClient({ baseUrl: idem.url, baseDelayMs: 10 });

  const created = await client.post("/charges", { key: "k-422", body: { amount: 1 } });
  assert.equal(created.status, 201);

  const mismatch = await client.post("/charges", { key: "k-422", body: { amount: 2 } });
  assert.equal(mismatch.status, 422);
  assert.equal(mismatch.attempts, 1);
  assert.equal(mismatch.ok, false);
  assert.equal(mismatch.body.code, "idempotency_key_mismatch");
  assert.match(mismatch.headers.get("content-type"), /application\/problem\+json/);
  assert.equal(mismatch.retry, "new_key");
  assert.ok(mismatch.body.differs.includes("body"), `differs: ${JSON.stringify(mismatch.body.differs)}`);
  assert.match(mismatch.body.type, /idem_http\/errors\/index\.html#idempotency_key_mismatch$/);
  assert.equal(mismatch.headers.get("link"), `<${mismatch.body.type}>; rel="describedby"`);

  const invalid = await client.post("/charges", { key: "k".repeat(300), body: { amount: 3 } });
  assert.equal(invalid.status, 400);
  assert.equal(invalid.attempts, 1);
  assert.equal(invalid.body.code, "idempotency_key_invalid");
  assert.equal(invalid.retry, "never");

  assert.equal(upstream.count("POST /charges"), 1);
});

test("a stored 5xx is not retried once replayed: the upstream's 500 runs once", async (t) => {
  const upstream = await startUpstream(t, {
    "POST /flaky": (_req, { count }) =>
      count === 1 ? { status: 500, json: { error: "boom" } } : { status: 201, json: { id: "ok" } },
  });
  const idem = await proxyFor(t, upstream.url);
  const client = new IdempotentClient({ baseUrl: idem.url, baseDelayMs: 10 });

  // The first 500 (not a replay) is retried once; idem stored it, so the retry replays it.
  const first = await client.post("/flaky", { key: "k-500", body: {} });
  assert.equal(first.status, 500);
  assert.equal(first.replayed, true);
  assert.equal(first.attempts, 2);
  assert.deepEqual(first.body, { error: "boom" });

  // A replayed 5xx is final at once.
  const again = await client.post("/flaky", { key: "k-500", body: {} });
  assert.equal(again.status, 500);
  assert.equal(again.replayed, true);
  assert.equal(again.attempts, 1);
  assert.equal(upstream.count("POST /flaky"), 1, "never executed twice");
});

test("504 upstream_outcome_unknown is stored: never retried, replayed to the next call", async (t) => {
  const upstream = await startUpstream(t, {
    "POST /hang": async (_req, { sleep }) => {
      await sleep(2000);
      return { status: 201, json: {} };
    },
  });
  const idem = await proxyFor(t, upstream.url, "--upstream-timeout", "300ms");
  const client = new IdempotentClient({ baseUrl: idem.url, baseDelayMs: 10 });

  const first = await client.post("/hang", { key: "k-504", body: { n: 1 } });
  assert.equal(first.status, 504);
  assert.equal(first.body.code, "upstream_outcome_unknown");
  assert.equal(first.retry, "new_key");
  assert.equal(first.replayed, false);
  assert.equal(first.attempts, 1);

  const again = await client.post("/hang", { key: "k-504", body: { n: 1 } });
  assert.equal(again.status, 504);
  assert.equal(again.replayed, true);
  assert.equal(again.attempts, 1);
  assert.equal(upstream.count("POST /hang"), 1);
});

test("502 upstream_unreachable released the key: the retry executes once the upstream is up", async (t) => {
  const port = await unusedPort();
  const idem = await proxyFor(t, `http://127.0.0.1:${port}`);
  let upstream;
  const { fetch } = recordingFetch(async (response) => {
    if (response.status === 502 && upstream === undefined) upstream = await startUpstream(t, charges, { port });
  });
  const client = new IdempotentClient({ baseUrl: idem.url, baseDelayMs: 10, fetch });

  const response = await client.post("/charges", { body: { amount: 7 } });
  assert.equal(response.status, 201);
  assert.deepEqual(response.body, { id: "ch_1", amount: 7 });
  assert.equal(response.attempts, 2);
  assert.equal(response.replayed, false);
  assert.equal(upstream.hits.length, 1);
  assert.equal(upstream.hits[0].key, response.key);
});

test("retries spent on retryable answers throw IdempotencyError with status, code, key and attempts", async (t) => {
  const port = await unusedPort();
  const idem = await proxyFor(t, `http://127.0.0.1:${port}`);
  const client = new IdempotentClient({ baseUrl: idem.url, retries: 2, baseDelayMs: 5 });

  const error = await client.post("/charges", { key: "k-exhausted", body: {} }).then(
    () => assert.fail("expected an IdempotencyError"),
    (caught) => caught,
  );
  assert.ok(error instanceof IdempotencyError);
  assert.equal(error.name, "IdempotencyError");
  assert.equal(error.status, 502);
  assert.equal(error.code, "upstream_unreachable");
  assert.equal(error.key, "k-exhausted");
  assert.equal(error.attempts, 3);
  assert.equal(error.retryable, true);
  assert.equal(error.retry, "same_key");
  assert.match(error.type, /idem_http\/errors\/index\.html#upstream_unreachable$/);
});

test("network errors that never end throw IdempotencyError with the cause; the signal cancels backoff", async () => {
  const port = await unusedPort();
  const client = new IdempotentClient({ baseUrl: `http://127.0.0.1:${port}`, retries: 2, baseDelayMs: 5 });
  const error = await client.post("/x", { body: "text" }).catch((caught) => caught);
  assert.ok(error instanceof IdempotencyError);
  assert.equal(error.status, undefined);
  assert.equal(error.attempts, 3);
  assert.ok(error.cause instanceof Error);
  assert.match(error.key, UUID_V4);

  const slow = new IdempotentClient({ baseUrl: `http://127.0.0.1:${port}`, baseDelayMs: 60_000, maxDelayMs: 60_000 });
  const controller = new AbortController();
  const pending = slow.post("/x", { signal: controller.signal });
  setTimeout(() => controller.abort(new Error("caller gave up")), 50);
  await assert.rejects(pending, /caller gave up/);
});

test("streamed bodies are refused: they cannot be sent again on a retry", async () => {
  const client = new IdempotentClient({ baseUrl: "http://127.0.0.1:9" });
  const stream = new ReadableStream({ start: (controller) => controller.close() });
  await assert.rejects(client.post("/x", { body: stream }), TypeError);
});
