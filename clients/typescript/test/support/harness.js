// Test harness: the real idem binary, tiny upstreams and faulty fronts, all on loopback with
// ports chosen by the OS, each stopped when the test that started it ends (pass or fail).

import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";

const packageDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The idem binary: `IDEM_BIN`, else `../../target/debug/idem` from the package. */
export const IDEM_BIN = process.env.IDEM_BIN
  ? path.resolve(process.env.IDEM_BIN)
  : path.resolve(packageDir, "..", "..", "target", "debug", "idem");

if (!existsSync(IDEM_BIN)) {
  throw new Error(
    `the idem binary was not found at ${IDEM_BIN}: build it (cargo build -p idem) ` +
      `or point IDEM_BIN at one`,
  );
}

/** Every child still running, killed if this test process exits on an error. */
const children = new Set();
process.once("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    for (const child of children) child.kill("SIGKILL");
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

async function stopChild(child) {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = once(child, "exit");
    child.kill("SIGKILL");
    await exited;
  }
  children.delete(child);
}

/**
 * Starts `idem <subcommand> --listen 127.0.0.1:0 --store memory:// ...args`, reads the
 * address it announces on stdout, and kills it when the test ends.
 * @returns {Promise<{ url: string, stderr: () => string }>}
 */
export async function startIdem(t, subcommand, args) {
  const child = spawn(IDEM_BIN, [subcommand, "--listen", "127.0.0.1:0", "--store", "memory://", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  children.add(child);
  t.after(() => stopChild(child));
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (chunk) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const url = await new Promise((resolve, reject) => {
    let stdout = "";
    const fail = (why) => {
      clearTimeout(timer);
      reject(new Error(`idem ${subcommand} ${why}; stderr:\n${stderr}`));
    };
    const timer = setTimeout(() => fail("announced no address within 10 s"), 10_000);
    child.once("error", (error) => fail(`could not start: ${error.message}`));
    child.once("exit", (code, signal) => fail(`exited (${code ?? signal}) before listening`));
    child.stdout.setEncoding("utf8").on("data", (chunk) => {
      stdout += chunk;
      const match = /idem \S+ listening on (http:\/\/\S+)/.exec(stdout);
      if (match) {
        clearTimeout(timer);
        child.removeAllListeners("exit");
        resolve(match[1]);
      }
    });
  });
  return { url, stderr: () => stderr };
}

/**
 * A tiny HTTP upstream. `routes` maps `METHOD /path` to `(request, context) => answer`,
 * where `answer` is `{ status, json?, text?, headers? }` and `context` has `body` (text),
 * `json` (parsed or undefined), `count` (executions of this route so far, this one
 * included) and `sleep(ms)` (cut short when the server stops). Every request is recorded
 * in `hits` with its idempotency key.
 */
export async function startUpstream(t, routes, { port = 0 } = {}) {
  const hits = [];
  const counts = new Map();
  const stopping = new AbortController();
  const arrivals = [];
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString("utf8");
    const route = `${req.method} ${req.url}`;
    const hit = { route, key: req.headers["idempotency-key"], body };
    hits.push(hit);
    for (const waiter of arrivals.splice(0)) waiter(hit);
    const handler = routes[route];
    if (handler === undefined) {
      res.writeHead(404).end();
      return;
    }
    const count = (counts.get(route) ?? 0) + 1;
    counts.set(route, count);
    let json;
    try {
      json = body === "" ? undefined : JSON.parse(body);
    } catch {}
    const sleep = (ms) => delay(ms, undefined, { signal: stopping.signal }).catch(() => {});
    const answer = await handler(req, { body, json, count, sleep });
    if (stopping.signal.aborted) return;
    const headers = { ...answer.headers };
    let payload = answer.text ?? "";
    if (answer.json !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(answer.json);
    }
    res.writeHead(answer.status ?? 200, headers).end(payload);
  });
  server.listen(port, "127.0.0.1");
  await once(server, "listening");
  t.after(async () => {
    stopping.abort();
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });
  const { port: bound } = server.address();
  return {
    url: `http://127.0.0.1:${bound}`,
    hits,
    /** Executions of `METHOD /path` so far. */
    count: (route) => counts.get(route) ?? 0,
    /** Resolves with the next request the upstream receives. */
    nextArrival: () => new Promise((resolve) => arrivals.push(resolve)),
  };
}

/** A port that was free a moment ago and has nothing listening on it. */
export async function unusedPort() {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * A TCP front for `target` (`http://host:port`) that spoils the first `faults` connections
 * after the request got through and the answer started to come back: `drop` cuts the
 * client's connection (the client sees a network error), `503` answers 503 instead (a load
 * balancer giving up). Later connections are forwarded as they are.
 */
export async function startFront(t, target, { mode, faults = 1 }) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  let spoiled = 0;
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client).add(upstream);
    for (const socket of [client, upstream]) {
      socket.on("error", () => {});
      socket.on("close", () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    if (spoiled < faults) {
      spoiled += 1;
      client.pipe(upstream);
      upstream.once("data", () => {
        client.unpipe(upstream);
        upstream.removeAllListeners("close");
        upstream.destroy();
        sockets.delete(upstream);
        if (mode === "503") {
          client.end("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        } else {
          client.destroy();
        }
      });
    } else {
      client.pipe(upstream).pipe(client);
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  });
  return { url: `http://127.0.0.1:${server.address().port}`, spoiled: () => spoiled };
}

/** A `fetch` that records every request it sends (`calls`) and can run a hook on answers. */
export function recordingFetch(onResponse) {
  const calls = [];
  const fetchLike = async (input, init) => {
    calls.push({ url: input, method: init.method, key: new Headers(init.headers).get("idempotency-key") });
    const response = await fetch(input, init);
    if (onResponse) await onResponse(response, calls.length);
    return response;
  };
  return { fetch: fetchLike, calls };
}

export const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
