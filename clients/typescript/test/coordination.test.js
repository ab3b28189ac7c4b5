// CoordinationClient against the real `idem serve`.

import assert from "node:assert/strict";
import test from "node:test";

import { CoordinationClient, IdempotencyError } from "../dist/index.js";
import { UUID_V4, recordingFetch, startFront, startIdem, startUpstream } from "./support/harness.js";

/**
 * An operation server: `/charge` makes a new charge per execution, `/slow` takes 600 ms,
 * `/fail` answers 500, `/decline` refuses with its own 402, `/busy` answers 503 the first
 * time and charges after.
 */
async function operations(t) {
  return startUpstream(t, {
    "POST /decline": () => ({ status: 402, json: { reason: "card_declined" } }),
    "POST /busy": (_req, { json, count }) =>
      count === 1 ? { status: 503, text: "busy" } : { status: 200, json: { charge_id: `busy_${count}`, amount: json.amount } },
    "POST /charge": (_req, { json, count }) => ({ status: 200, json: { charge_id: `ch_${count}`, amount: json.amount } }),
    "POST /slow": async (_req, { json, count, sleep }) => {
      await sleep(600);
      return { status: 200, json: { charge_id: `slow_${count}`, amount: json.amount } };
    },
    "POST /fail": () => ({ status: 500, text: "down" }),
  });
}

/** `idem serve` with five operations and a 1 s lease (so `Retry-After` is 1 s); the lease is
 * renewed while an operation runs, so the 600 ms one could take longer. */
async function serve(t, ops) {
  return startIdem(t, "serve", [
    "--lease",
    "1s",
    "--operation-timeout",
    "900ms",
    "--operation",
    `payment.charge=${ops.url}/charge`,
    "--operation",
    `payment.slow=${ops.url}/slow`,
    "--operation",
    `payment.failing=${ops.url}/fail`,
    "--operation",
    `payment.declining=${ops.url}/decline`,
    "--operation",
    `payment.busy=${ops.url}/busy`,
  ]);
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

test("execute runs the operation once per key and replays its result", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const client = new CoordinationClient({ baseUrl: idem.url });

  const first = await client.execute("payment.charge", { amount: 1000 }, { key: "order-1" });
  const again = await client.execute("payment.charge", { amount: 1000 }, { key: "order-1" });
  assert.deepEqual(first, { charge_id: "ch_1", amount: 1000 });
  assert.deepEqual(again, first);
  assert.equal(ops.count("POST /charge"), 1);
  assert.equal(ops.hits[0].key, "order-1", "the operation receives the key");

  // Without a key, each call is a new logical operation with its own UUID v4.
  const other = await client.execute("payment.charge", { amount: 1000 });
  assert.deepEqual(other, { charge_id: "ch_2", amount: 1000 });
  assert.match(ops.hits[1].key, UUID_V4);
});

test("execute retries 202 processing after Retry-After and gets the one result", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const { fetch, calls } = recordingFetch();
  const client = new CoordinationClient({ baseUrl: idem.url, baseDelayMs: 10, fetch });

  const arrived = ops.nextArrival();
  const first = client.execute("payment.slow", { amount: 5 }, { key: "order-slow" });
  await arrived;
  const before = calls.length;
  const started = Date.now();
  const second = await client.execute("payment.slow", { amount: 5 }, { key: "order-slow" });
  const waited = Date.now() - started;

  assert.deepEqual(second, { charge_id: "slow_1", amount: 5 });
  assert.deepEqual(await first, second);
  assert.equal(calls.length - before, 2, "one 202, then the result");
  assert.ok(waited >= 900, `waited ${waited} ms, Retry-After said 1 s`);
  assert.equal(ops.count("POST /slow"), 1);
});

test("execute retries a lost answer with the same key: executed once", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const front = await startFront(t, idem.url, { mode: "drop" });
  const { fetch, calls } = recordingFetch();
  const client = new CoordinationClient({ baseUrl: front.url, baseDelayMs: 10, fetch });

  const result = await client.execute("payment.charge", { amount: 3 });
  assert.deepEqual(result, { charge_id: "ch_1", amount: 3 });
  assert.equal(front.spoiled(), 1);
  assert.equal(calls.length, 2);
  assert.equal(calls[0].key, calls[1].key);
  assert.equal(ops.count("POST /charge"), 1);
});

test("execute throws IdempotencyError with the API's code, without retrying final answers", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const { fetch, calls } = recordingFetch();
  const client = new CoordinationClient({ baseUrl: idem.url, baseDelayMs: 10, fetch });

  await client.execute("payment.charge", { amount: 1 }, { key: "k-mismatch" });
  const mismatch = await rejection(client.execute("payment.charge", { amount: 2 }, { key: "k-mismatch" }));
  assert.equal(mismatch.status, 422);
  assert.equal(mismatch.code, "IDEMPOTENCY_KEY_MISMATCH");
  assert.equal(mismatch.key, "k-mismatch");
  assert.equal(mismatch.attempts, 1);
  assert.equal(mismatch.retryable, false);
  assert.equal(mismatch.retry, "new_key");
  assert.deepEqual(mismatch.differs, ["payload"], "the payload differs, not the operation");
  assert.match(mismatch.type, /idem_http\/errors\/index\.html#idempotency_key_mismatch$/);

  const unknown = await rejection(client.execute("payment.nope", {}));
  assert.equal(unknown.status, 404);
  assert.equal(unknown.code, "UNKNOWN_OPERATION");

  // A failed operation is stored: the retry gets the same error and the operation ran once.
  const failed = await rejection(client.execute("payment.failing", { n: 1 }, { key: "k-fail" }));
  assert.equal(failed.status, 502);
  assert.equal(failed.code, "OPERATION_FAILED");
  assert.equal(failed.attempts, 1);
  assert.equal(failed.retry, "new_key");
  assert.equal(failed.operation, undefined, "an operation's 5xx stays hidden");
  const replayed = await rejection(client.execute("payment.failing", { n: 1 }, { key: "k-fail" }));
  assert.equal(replayed.code, "OPERATION_FAILED");
  assert.equal(ops.count("POST /fail"), 1);
  assert.equal(calls.length, 5, "no call was retried");
});

test("an operation's own 4xx is OPERATION_REJECTED: its status and body exposed, kept for the key, never retried", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const { fetch, calls } = recordingFetch();
  const client = new CoordinationClient({ baseUrl: idem.url, baseDelayMs: 10, fetch });

  const rejected = await rejection(client.execute("payment.declining", { amount: 9 }, { key: "k-402" }));
  assert.equal(rejected.status, 402);
  assert.equal(rejected.code, "OPERATION_REJECTED");
  assert.deepEqual(rejected.operation, { status: 402, body: { reason: "card_declined" } });
  assert.equal(rejected.retry, "new_key");
  assert.equal(rejected.retryable, false);
  assert.equal(rejected.attempts, 1);
  assert.match(rejected.type, /idem_http\/errors\/index\.html#operation_rejected$/);

  const replayed = await rejection(client.execute("payment.declining", { amount: 9 }, { key: "k-402" }));
  assert.deepEqual(replayed.operation, rejected.operation);
  const looked = await rejection(client.status("k-402"));
  assert.equal(looked.code, "OPERATION_REJECTED");
  assert.equal(ops.count("POST /decline"), 1, "kept for the key: the operation ran once");
  assert.equal(calls.length, 3, "no call was retried");
});

test("an operation's 503 releases the key: retried with the same key (same_key), and it runs again", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const { fetch, calls } = recordingFetch();
  const client = new CoordinationClient({ baseUrl: idem.url, baseDelayMs: 10, fetch });

  const result = await client.execute("payment.busy", { amount: 4 }, { key: "k-busy" });
  assert.deepEqual(result, { charge_id: "busy_2", amount: 4 });
  assert.equal(calls.length, 2);
  assert.ok(calls.every((call) => call.key === "k-busy"));
  assert.equal(ops.count("POST /busy"), 2);
});

test("begin / complete / release / status round trip keeps the 64-bit lease token as a string", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const raw = [];
  const client = new CoordinationClient({
    baseUrl: idem.url,
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      raw.push(await response.clone().text());
      return response;
    },
  });
  const key = "job-7";

  assert.deepEqual(await client.status(key), { status: "absent", key });

  const acquired = await client.begin("report.build", { month: "2024-05" }, { key });
  assert.equal(acquired.status, "acquired");
  assert.equal(acquired.key, key);
  assert.equal(typeof acquired.leaseToken, "string");
  assert.match(acquired.leaseToken, /^\d+$/);
  assert.equal(acquired.leaseToken, JSON.parse(raw.at(-1)).lease_token, "every digit kept");
  assert.equal(BigInt(acquired.leaseToken).toString(), acquired.leaseToken);
  assert.ok(acquired.leaseExpiresAt > Date.now() - 5_000 && acquired.leaseExpiresAt < Date.now() + 5_000);

  const busy = await client.begin("report.build", { month: "2024-05" }, { key });
  assert.equal(busy.status, "processing");
  assert.equal(busy.retryAfterMs, 1000);
  assert.equal((await client.status(key)).status, "processing");

  // A token one off is someone else's lease.
  const wrong = (BigInt(acquired.leaseToken) ^ 1n).toString();
  const lost = await rejection(client.release(key, wrong));
  assert.equal(lost.status, 409);
  assert.equal(lost.code, "LEASE_LOST");
  assert.equal(lost.retry, "new_key");

  // The client renews while it executes: past two whole leases, the key is still its own.
  assert.equal(acquired.leaseMs, 1000);
  for (let i = 0; i < 5; i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal(await client.renew(key, acquired.leaseToken), 1000);
  }
  assert.equal((await client.status(key)).status, "processing");
  const stolen = await rejection(client.renew(key, wrong));
  assert.equal(stolen.status, 409);
  assert.equal(stolen.code, "LEASE_LOST");
  await assert.rejects(client.release(key, Number(acquired.leaseToken)), TypeError);

  await client.release(key, acquired.leaseToken);
  assert.deepEqual(await client.status(key), { status: "absent", key });

  const again = await client.begin("report.build", { month: "2024-05" }, { key });
  assert.equal(again.status, "acquired");
  const stored = await client.complete(key, again.leaseToken, { rows: 12, url: "s3://reports/2024-05" });
  assert.deepEqual(stored, { rows: 12, url: "s3://reports/2024-05" });

  assert.deepEqual(await client.status(key), { status: "completed", key, result: stored });
  assert.deepEqual(await client.begin("report.build", { month: "2024-05" }, { key }), {
    status: "completed",
    key,
    result: stored,
  });
  const late = await rejection(client.complete(key, again.leaseToken, { rows: 0 }));
  assert.equal(late.code, "LEASE_LOST");

  const mismatch = await rejection(client.begin("report.build", { month: "2024-06" }, { key }));
  assert.equal(mismatch.code, "IDEMPOTENCY_KEY_MISMATCH");
  assert.equal(ops.hits.length, 0, "the two-phase flow calls no operation");
});

test("complete retried after a lost answer succeeds when its own result was stored", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const client = new CoordinationClient({ baseUrl: idem.url, baseDelayMs: 10 });
  const acquired = await client.begin("export", { id: 1 }, { key: "k-complete" });
  assert.equal(acquired.status, "acquired");

  // The first PUT lands but its answer is lost; the retry is refused (LEASE_LOST) and
  // the client finds its own result stored.
  const front = await startFront(t, idem.url, { mode: "drop" });
  const viaFront = new CoordinationClient({ baseUrl: front.url, baseDelayMs: 10 });
  const stored = await viaFront.complete("k-complete", acquired.leaseToken, { file: "a.csv", bytes: 10 });
  assert.equal(front.spoiled(), 1);
  assert.deepEqual(stored, { file: "a.csv", bytes: 10 });
  assert.deepEqual(await client.status("k-complete"), {
    status: "completed",
    key: "k-complete",
    result: { file: "a.csv", bytes: 10 },
  });
});

test("a lease that is not renewed leaves the key of unknown outcome: never executed again", async (t) => {
  const ops = await operations(t);
  const idem = await serve(t, ops);
  const client = new CoordinationClient({ baseUrl: idem.url });
  const key = "job-crashed";
  const acquired = await client.begin("report.build", { month: "2024-06" }, { key });
  assert.equal(acquired.status, "acquired");
  // The executing client "crashes": it neither renews nor completes.
  await new Promise((resolve) => setTimeout(resolve, 1300));
  const unknown = await rejection(client.begin("report.build", { month: "2024-06" }, { key }));
  assert.equal(unknown.status, 409);
  assert.equal(unknown.code, "OUTCOME_UNKNOWN");
  assert.equal(unknown.retry, "new_key");
  assert.equal(unknown.retryable, false);
  const status = await rejection(client.status(key));
  assert.equal(status.code, "OUTCOME_UNKNOWN");
});
