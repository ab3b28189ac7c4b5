// Both clients against a stub fetch: idem's `retry` advice decides what is sent again, in
// both error document shapes (problem+json behind `idem proxy`, `{"error":{...}}` from
// `idem serve`), and the status-code rule decides only for answers without it.

import assert from "node:assert/strict";
import test from "node:test";

import { CoordinationClient, IdempotencyError, IdempotentClient } from "../dist/index.js";
import { errorDocument } from "../dist/shared.js";

const DOCS = "https://github.com/example/idem/blob/main/docs/guides/errors.md";
const INSTANCE = "urn:uuid:00000000-0000-4000-8000-000000000000";

/** A problem+json document as the layer and `idem proxy` write it. */
function problem(status, code, retry, extra = {}) {
  return {
    status,
    type: "application/problem+json",
    body: {
      type: `${DOCS}#${code}`,
      title: code,
      status,
      code,
      detail: `what to do about ${code}`,
      instance: INSTANCE,
      ...(retry === undefined ? {} : { retry }),
      ...extra,
    },
  };
}

/** An `idem serve` error document. */
function serveError(status, code, retry, extra = {}) {
  return {
    status,
    type: "application/json",
    body: {
      error: {
        code,
        message: `what to do about ${code}`,
        ...(retry === undefined ? {} : { retry, type: `${DOCS}#${code.toLowerCase()}` }),
        ...extra,
      },
    },
  };
}

/** A plain JSON answer. */
function answer(status, body, headers = {}) {
  return { status, type: "application/json", body, headers };
}

/**
 * A `fetch` that answers from `script`, one entry per request (the last one repeats), and
 * records each request's key.
 */
function scripted(...script) {
  const calls = [];
  const fetch = async (url, init) => {
    const headers = new Headers(init.headers);
    calls.push({ url, method: init.method, key: headers.get("idempotency-key") });
    const next = script[Math.min(calls.length - 1, script.length - 1)];
    return new Response(JSON.stringify(next.body), {
      status: next.status,
      headers: { "content-type": next.type, ...next.headers },
    });
  };
  return { fetch, calls };
}

function proxyClient(fetch, options = {}) {
  return new IdempotentClient({ baseUrl: "http://idem.test", baseDelayMs: 1, fetch, ...options });
}

function serveClient(fetch, options = {}) {
  return new CoordinationClient({ baseUrl: "http://idem.test", baseDelayMs: 1, fetch, ...options });
}

async function rejection(promise) {
  return promise.then(
    () => assert.fail("expected an IdempotencyError"),
    (error) => {
      assert.ok(error instanceof IdempotencyError, `not an IdempotencyError: ${error}`);
      return error;
    },
  );
}

// ---- the document, in both shapes ------------------------------------------------------

function exchange(status, body) {
  return { response: new Response(null, { status }), body };
}

test("errorDocument reads a problem+json document: code, detail, retry, type, instance, differs", () => {
  const { body } = problem(422, "idempotency_key_mismatch", "new_key", { differs: ["body", "header"] });
  assert.deepEqual(errorDocument(exchange(422, body)), {
    code: "idempotency_key_mismatch",
    message: "what to do about idempotency_key_mismatch",
    retry: "new_key",
    type: `${DOCS}#idempotency_key_mismatch`,
    instance: INSTANCE,
    differs: ["body", "header"],
    operation: undefined,
  });
});

test("errorDocument reads an idem serve document: error.code, message, retry, type, instance, operation", () => {
  const { body } = serveError(402, "OPERATION_REJECTED", "new_key", {
    instance: INSTANCE,
    operation: { status: 402, body: { reason: "card_declined" } },
  });
  assert.deepEqual(errorDocument(exchange(402, body)), {
    code: "OPERATION_REJECTED",
    message: "what to do about OPERATION_REJECTED",
    retry: "new_key",
    type: `${DOCS}#operation_rejected`,
    instance: INSTANCE,
    differs: undefined,
    operation: { status: 402, body: { reason: "card_declined" } },
  });
});

test("errorDocument ignores successes, bodies without a code, and members of the wrong type", () => {
  assert.equal(errorDocument(exchange(200, { code: "x", retry: "same_key" })), undefined, "a 2xx is never an error");
  assert.equal(errorDocument(exchange(503, { retry: "same_key" })), undefined, "no code: not idem's document");
  assert.equal(errorDocument(exchange(503, "Service Unavailable")), undefined);
  assert.equal(errorDocument(exchange(503, [{ code: "x" }])), undefined);
  const odd = errorDocument(
    exchange(409, { code: "x", retry: 3, type: null, instance: 1, differs: ["body", 7], operation: { status: "402" } }),
  );
  assert.deepEqual(odd, {
    code: "x",
    message: undefined,
    retry: undefined,
    type: undefined,
    instance: undefined,
    differs: ["body"],
    operation: undefined,
  });
});

// ---- IdempotentClient: problem+json -------------------------------------------------------

test("IdempotentClient retries same_key with the same key, whatever the status (a 400 here)", async () => {
  const { fetch, calls } = scripted(problem(400, "request_body_unreadable", "same_key"), answer(201, { id: "ch_1" }));
  const response = await proxyClient(fetch).post("/charges", { body: { amount: 1 } });
  assert.equal(response.status, 201);
  assert.equal(response.attempts, 2);
  assert.equal(response.retry, undefined, "a success carries no advice");
  assert.equal(calls[0].key, calls[1].key);
});

test("IdempotentClient honours Retry-After on a same_key answer", async () => {
  const inProgress = problem(409, "request_in_progress", "same_key");
  inProgress.headers = { "retry-after": "1" };
  const { fetch } = scripted(inProgress, answer(201, { id: "ch_1" }, { "x-idempotent-replayed": "true" }));
  const started = Date.now();
  const response = await proxyClient(fetch).post("/charges", { body: {} });
  const waited = Date.now() - started;
  assert.equal(response.replayed, true);
  assert.ok(waited >= 900, `waited ${waited} ms, Retry-After said 1 s`);
});

test("IdempotentClient does not retry new_key, even on a status the old rule retries (503)", async () => {
  const { fetch, calls } = scripted(problem(503, "outcome_unknown", "new_key"), answer(201, {}));
  const response = await proxyClient(fetch).post("/charges", { body: {} });
  assert.equal(response.status, 503);
  assert.equal(response.attempts, 1);
  assert.equal(response.retry, "new_key");
  assert.equal(calls.length, 1);
});

test("IdempotentClient does not retry never (a 502 here) and returns the advice", async () => {
  const { fetch, calls } = scripted(problem(502, "something_new", "never"), answer(201, {}));
  const response = await proxyClient(fetch).post("/charges", { body: {} });
  assert.equal(response.status, 502);
  assert.equal(response.retry, "never");
  assert.equal(calls.length, 1);
});

test("IdempotentClient does not retry operation_failed: new_key, its result is kept for the key", async () => {
  const { fetch, calls } = scripted(problem(502, "operation_failed", "new_key"), answer(201, {}));
  const response = await proxyClient(fetch).post("/charges", { body: {} });
  assert.equal(response.status, 502);
  assert.equal(response.retry, "new_key");
  assert.equal(calls.length, 1);
});

test("IdempotentClient treats an advice it does not know as final", async () => {
  const { fetch, calls } = scripted(problem(503, "store_full", "after_coffee"), answer(201, {}));
  const response = await proxyClient(fetch).post("/charges", { body: {} });
  assert.equal(response.status, 503);
  assert.equal(response.retry, "after_coffee");
  assert.equal(calls.length, 1);
});

test("IdempotentClient returns a mismatch at once, with what differs in the body", async () => {
  const { fetch, calls } = scripted(problem(409, "idempotency_key_mismatch", "new_key", { differs: ["body"] }));
  const response = await proxyClient(fetch).post("/charges", { key: "k", body: {} });
  assert.equal(response.status, 409, "a configured mismatch status of 409 is not in progress");
  assert.equal(response.retry, "new_key");
  assert.deepEqual(response.body.differs, ["body"]);
  assert.equal(calls.length, 1);
});

test("IdempotentClient never retries a replay, whatever its advice", async () => {
  const replay = problem(503, "store_unavailable", "same_key");
  replay.headers = { "x-idempotent-replayed": "true" };
  const { fetch, calls } = scripted(replay, answer(201, {}));
  const response = await proxyClient(fetch).post("/charges", { body: {} });
  assert.equal(response.replayed, true);
  assert.equal(calls.length, 1);
});

test("IdempotentClient never retries a success that happens to hold a retry member", async () => {
  const { fetch, calls } = scripted(answer(200, { code: "queued", retry: "same_key" }));
  const response = await proxyClient(fetch).post("/jobs", { body: {} });
  assert.equal(response.status, 200);
  assert.equal(response.retry, undefined);
  assert.equal(calls.length, 1);
});

test("IdempotentClient spent on same_key throws a retryable IdempotencyError with the advice and type", async () => {
  const { fetch, calls } = scripted(problem(502, "upstream_unreachable", "same_key"));
  const error = await rejection(proxyClient(fetch, { retries: 2 }).post("/charges", { key: "k-spent", body: {} }));
  assert.equal(calls.length, 3);
  assert.equal(error.status, 502);
  assert.equal(error.code, "upstream_unreachable");
  assert.equal(error.retry, "same_key");
  assert.equal(error.retryable, true);
  assert.equal(error.type, `${DOCS}#upstream_unreachable`);
  assert.equal(error.differs, undefined);
  assert.equal(error.operation, undefined);
  assert.equal(error.key, "k-spent");
});

test("IdempotentClient without advice keeps the status rule: 5xx retried, a passed-through 409 not", async () => {
  const lb = { status: 503, type: "text/plain", body: "Service Unavailable" };
  const first = scripted(lb, answer(201, { id: "ch_1" }));
  assert.equal((await proxyClient(first.fetch).post("/charges", { body: {} })).attempts, 2);

  const older = scripted(problem(409, "request_in_progress", undefined), answer(201, {}));
  assert.equal((await proxyClient(older.fetch).post("/charges", { body: {} })).attempts, 2, "an older idem's 409");

  const upstream409 = scripted(answer(409, { error: "exists" }, { "x-idempotent-replayed": "false" }), answer(201, {}));
  const response = await proxyClient(upstream409.fetch).post("/charges", { body: {} });
  assert.equal(response.status, 409);
  assert.equal(response.retry, undefined);
  assert.equal(upstream409.calls.length, 1);

  const unknown = scripted(problem(504, "upstream_outcome_unknown", undefined), answer(201, {}));
  assert.equal((await proxyClient(unknown.fetch).post("/charges", { body: {} })).attempts, 1);
});

test("IdempotentClient retries a passed-on 429 with the same key after Retry-After (capped by maxDelayMs)", async () => {
  const limited = answer(429, { error: "slow down" }, { "retry-after": "1" });
  const { fetch, calls } = scripted(limited, answer(201, { id: "ch_1" }, { "x-idempotent-replayed": "false" }));
  const started = Date.now();
  const response = await proxyClient(fetch, { maxDelayMs: 200 }).post("/charges", { key: "k-429", body: {} });
  const waited = Date.now() - started;
  assert.equal(response.status, 201);
  assert.deepEqual(response.body, { id: "ch_1" });
  assert.equal(response.attempts, 2);
  assert.equal(response.replayed, false, "idem released the key on the 429: the retry executed");
  assert.deepEqual(
    calls.map((call) => call.key),
    ["k-429", "k-429"],
  );
  assert.ok(waited >= 180, `waited ${waited} ms: Retry-After 1 s capped at maxDelayMs 200, not backoff`);
});

test("IdempotentClient reads an HTTP-date Retry-After on a 429; a replayed 429 is final", async () => {
  const limited = answer(429, {}, { "retry-after": new Date(Date.now() + 60_000).toUTCString() });
  const { fetch, calls } = scripted(limited, answer(201, {}));
  const started = Date.now();
  const response = await proxyClient(fetch, { maxDelayMs: 150 }).post("/charges", { body: {} });
  assert.equal(response.status, 201);
  assert.equal(calls.length, 2);
  assert.ok(Date.now() - started >= 130, "the date was honoured, capped at maxDelayMs");

  const stored = scripted(answer(429, {}, { "retry-after": "1", "x-idempotent-replayed": "true" }), answer(201, {}));
  const replay = await proxyClient(stored.fetch).post("/charges", { body: {} });
  assert.equal(replay.status, 429);
  assert.equal(replay.replayed, true);
  assert.equal(stored.calls.length, 1);
});

test("IdempotentClient spent on a 429 throws a retryable IdempotencyError", async () => {
  const { fetch, calls } = scripted(answer(429, {}, { "retry-after": "0" }));
  const error = await rejection(proxyClient(fetch, { retries: 1 }).post("/charges", { key: "k", body: {} }));
  assert.equal(calls.length, 2);
  assert.equal(error.status, 429);
  assert.equal(error.retryable, true);
  assert.equal(error.retry, undefined);
});

test("IdempotencyError.instance comes from a problem+json document's instance", async () => {
  const { fetch } = scripted(problem(503, "store_unavailable", "same_key"));
  const error = await rejection(proxyClient(fetch, { retries: 0 }).post("/charges", { body: {} }));
  assert.equal(error.code, "store_unavailable");
  assert.equal(error.instance, INSTANCE);
});

// ---- CoordinationClient: {"error":{...}} --------------------------------------------------

test("CoordinationClient exposes OPERATION_REJECTED: the operation's status and body, retry new_key, not retried", async () => {
  const { fetch, calls } = scripted(
    serveError(402, "OPERATION_REJECTED", "new_key", { operation: { status: 402, body: { reason: "card_declined" } } }),
    answer(200, { status: "completed", result: {} }),
  );
  const error = await rejection(serveClient(fetch).execute("payment.charge", { amount: 1 }, { key: "k-402" }));
  assert.equal(calls.length, 1);
  assert.equal(error.status, 402);
  assert.equal(error.code, "OPERATION_REJECTED");
  assert.deepEqual(error.operation, { status: 402, body: { reason: "card_declined" } });
  assert.equal(error.retry, "new_key");
  assert.equal(error.retryable, false);
  assert.equal(error.type, `${DOCS}#operation_rejected`);
  assert.match(error.message, /HTTP 402 OPERATION_REJECTED: what to do/);
});

test("IdempotencyError.instance comes from an idem serve document's error.instance, undefined without one", async () => {
  const withIt = scripted(serveError(422, "IDEMPOTENCY_KEY_MISMATCH", "new_key", { instance: INSTANCE }));
  const error = await rejection(serveClient(withIt.fetch).execute("op", {}, { key: "k" }));
  assert.equal(error.code, "IDEMPOTENCY_KEY_MISMATCH");
  assert.equal(error.instance, INSTANCE);

  const older = scripted(serveError(422, "IDEMPOTENCY_KEY_MISMATCH", "new_key"));
  assert.equal((await rejection(serveClient(older.fetch).execute("op", {}, { key: "k" }))).instance, undefined);
});

test("CoordinationClient does not retry new_key: a mismatch says what differs", async () => {
  const { fetch, calls } = scripted(serveError(422, "IDEMPOTENCY_KEY_MISMATCH", "new_key", { differs: ["method", "body"] }));
  const error = await rejection(serveClient(fetch).begin("report.build", { month: "2024-06" }, { key: "k" }));
  assert.equal(calls.length, 1);
  assert.equal(error.retry, "new_key");
  assert.equal(error.retryable, false);
  assert.deepEqual(error.differs, ["method", "body"]);
  assert.equal(error.operation, undefined);
});

test("CoordinationClient retries same_key with the same key: STORE_FULL, then INTERNAL, then the result", async () => {
  const { fetch, calls } = scripted(
    serveError(503, "STORE_FULL", "same_key"),
    serveError(500, "INTERNAL", "same_key"),
    answer(200, { status: "completed", result: { charge_id: "ch_1" } }),
  );
  const result = await serveClient(fetch).execute("payment.charge", { amount: 1 }, { key: "k-full" });
  assert.deepEqual(result, { charge_id: "ch_1" });
  assert.equal(calls.length, 3);
  assert.ok(calls.every((call) => call.key === "k-full"));
});

test("CoordinationClient does not retry never, even on a 503", async () => {
  const { fetch, calls } = scripted(serveError(503, "SOMETHING_NEW", "never"), answer(200, { status: "completed", result: 1 }));
  const error = await rejection(serveClient(fetch).status("k"));
  assert.equal(calls.length, 1);
  assert.equal(error.retryable, false);
  assert.equal(error.retry, "never");
});

test("CoordinationClient spent on same_key throws retryable with the advice", async () => {
  const { fetch, calls } = scripted(serveError(502, "OPERATION_UNREACHABLE", "same_key"));
  const error = await rejection(serveClient(fetch, { retries: 1 }).execute("payment.charge", {}, { key: "k" }));
  assert.equal(calls.length, 2);
  assert.equal(error.code, "OPERATION_UNREACHABLE");
  assert.equal(error.retry, "same_key");
  assert.equal(error.retryable, true);
});

test("CoordinationClient without advice keeps the status rule: an older idem's INTERNAL is final, OPERATION_UNREACHABLE retried", async () => {
  const internal = scripted(serveError(500, "INTERNAL", undefined), answer(200, { status: "completed", result: 1 }));
  const error = await rejection(serveClient(internal.fetch).execute("op", {}));
  assert.equal(internal.calls.length, 1);
  assert.equal(error.retry, undefined);
  assert.equal(error.retryable, false);

  const unreachable = scripted(serveError(502, "OPERATION_UNREACHABLE", undefined), answer(200, { status: "completed", result: 1 }));
  assert.equal(await serveClient(unreachable.fetch).execute("op", {}), 1);
  assert.equal(unreachable.calls.length, 2);
});

test("CoordinationClient reads a problem+json document too (an idem proxy in front of it)", async () => {
  const { fetch, calls } = scripted(problem(502, "upstream_unreachable", "same_key"), answer(200, { status: "completed", result: 2 }));
  assert.equal(await serveClient(fetch).execute("op", {}), 2);
  assert.equal(calls.length, 2);
});

// ---- the error itself -----------------------------------------------------------------------

test("IdempotencyError.retryable agrees with the advice when there is one", () => {
  const base = { key: "k", attempts: 1 };
  assert.equal(new IdempotencyError("m", { ...base, retryable: true, retry: "never" }).retryable, false);
  assert.equal(new IdempotencyError("m", { ...base, retryable: true, retry: "new_key" }).retryable, false);
  assert.equal(new IdempotencyError("m", { ...base, retryable: false, retry: "same_key" }).retryable, true);
  assert.equal(new IdempotencyError("m", { ...base, retryable: true }).retryable, true, "no advice: as given");
  const bare = new IdempotencyError("m", { ...base, retryable: false });
  assert.equal(bare.retry, undefined);
  assert.equal(bare.type, undefined);
  assert.equal(bare.instance, undefined);
  assert.equal(bare.differs, undefined);
  assert.equal(bare.operation, undefined);
});
