// Internals shared by both clients: options, backoff, Retry-After, bodies, idem's error
// documents and their retry advice, the retry loop.

import type { OperationAnswer, RetryAdvice } from "./errors.js";

/**
 * The subset of the global `fetch` the clients use. Pass your own to add logging, a
 * dispatcher or a test double.
 */
export type FetchLike = (input: string, init: RequestInit) => Promise<Response>;

/** Headers as `new Headers(...)` takes them: a `Headers`, a record, or `[name, value]` pairs. */
export type HeadersInput = ConstructorParameters<typeof Headers>[0];

type BodyInit = NonNullable<RequestInit["body"]>;

/** Options common to {@link IdempotentClient} and {@link CoordinationClient}. */
export interface ClientOptions {
  /** Where the API is, e.g. `http://127.0.0.1:8080` or `https://api.example.com/v1`. */
  baseUrl: string | URL;
  /** Retries after the first request of a logical attempt (so `retries + 1` requests at most). Default 4. */
  retries?: number | undefined;
  /** The first backoff ceiling in milliseconds; it doubles on every retry. Default 100. */
  baseDelayMs?: number | undefined;
  /** The largest delay between two requests, `Retry-After` included. Default 5000. */
  maxDelayMs?: number | undefined;
  /** Headers sent on every request, e.g. `Authorization` (idem scopes keys by it). */
  headers?: HeadersInput | undefined;
  /** The `fetch` to use. Default: the global `fetch`, looked up at call time. */
  fetch?: FetchLike | undefined;
  /** Makes a key for a logical attempt that was given none. Default: `crypto.randomUUID()`. */
  generateKey?: (() => string) | undefined;
}

/** Options of one call. */
export interface CallOptions {
  /** Cancels the whole logical attempt, backoff included; the call rejects with its reason. */
  signal?: AbortSignal | undefined;
}

/** The resolved settings of a client. */
export interface Settings {
  readonly baseUrl: string;
  readonly retries: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly headers: Headers;
  readonly fetch: FetchLike;
  readonly generateKey: () => string;
}

function nonNegative(name: string, value: number, integer: boolean): number {
  if (!Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value))) {
    throw new RangeError(`${name} must be a non-negative ${integer ? "integer" : "number"}, got ${value}`);
  }
  return value;
}

/** Validates the options and fills in the defaults. */
export function resolveSettings(options: ClientOptions): Settings {
  if (options === undefined || options.baseUrl === undefined) {
    throw new TypeError("baseUrl is required, e.g. { baseUrl: 'http://127.0.0.1:8080' }");
  }
  const baseUrl = new URL(String(options.baseUrl)).href.replace(/\/+$/, "");
  return {
    baseUrl,
    retries: nonNegative("retries", options.retries ?? 4, true),
    baseDelayMs: nonNegative("baseDelayMs", options.baseDelayMs ?? 100, false),
    maxDelayMs: nonNegative("maxDelayMs", options.maxDelayMs ?? 5000, false),
    headers: new Headers(options.headers),
    fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
    generateKey: options.generateKey ?? (() => globalThis.crypto.randomUUID()),
  };
}

/** `base` + `path`, keeping any path prefix of `base`. */
export function joinUrl(base: string, path: string): string {
  return base + (path.startsWith("/") ? path : `/${path}`);
}

/** `Retry-After` (delay-seconds or an HTTP date) in milliseconds, if present and valid. */
export function parseRetryAfter(value: string | null, now: number = Date.now()): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/**
 * The delay before retry number `retry` (1 for the first retry): `Retry-After` when the
 * answer had one, else exponential backoff with full jitter; both capped at `maxDelayMs`.
 */
export function retryDelay(settings: Settings, retry: number, retryAfterMs: number | undefined): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, settings.maxDelayMs);
  const ceiling = Math.min(settings.maxDelayMs, settings.baseDelayMs * 2 ** (retry - 1));
  return Math.random() * ceiling;
}

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
export function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** Whether a `Content-Type` is JSON (`application/json` or any `+json`, e.g. problem+json). */
export function isJson(contentType: string | null): boolean {
  if (contentType === null) return false;
  const type = (contentType.split(";")[0] ?? "").trim().toLowerCase();
  return type === "application/json" || (type.startsWith("application/") && type.endsWith("+json"));
}

/** The body of an answer: parsed JSON if its content type says JSON, else text. */
export async function readBody(response: Response): Promise<unknown> {
  const text = await response.text();
  if (text === "" || !isJson(response.headers.get("content-type"))) return text;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/**
 * Turns a request body into one that can be sent again, byte for byte, on every retry (idem
 * fingerprints the body: a different one on a retry would be a 422 mismatch). Strings, bytes,
 * `Blob` and `URLSearchParams` are sent as they are; `FormData` is encoded once; `null` is no
 * body; anything else is JSON (with `Content-Type: application/json` unless one is set).
 */
export async function resendableBody(body: unknown, headers: Headers): Promise<BodyInit | undefined> {
  if (body === undefined || body === null) return undefined;
  if (
    typeof body === "string" ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) ||
    body instanceof URLSearchParams ||
    body instanceof Blob
  ) {
    return body as BodyInit;
  }
  if (body instanceof FormData) {
    // A multipart boundary is random per encoding: encode once so every retry is identical.
    const encoded = new Response(body);
    const type = encoded.headers.get("content-type");
    if (type !== null && !headers.has("content-type")) headers.set("content-type", type);
    return new Uint8Array(await encoded.arrayBuffer());
  }
  if (body instanceof ReadableStream || (typeof body === "object" && body !== null && Symbol.asyncIterator in body)) {
    throw new TypeError("a streamed body cannot be sent again on a retry: pass a string, bytes, a Blob or a JSON value");
  }
  const json = JSON.stringify(body);
  if (json === undefined) throw new TypeError(`cannot send ${typeof body} as a JSON body`);
  if (!headers.has("content-type")) headers.set("content-type", "application/json");
  return json;
}

/** One answer, its body read. */
export interface Exchange {
  readonly response: Response;
  readonly body: unknown;
}

/** What an idem error document says, read from either of its shapes. */
export interface ErrorDocument {
  /** `code` (problem+json, snake_case) or `error.code` (`idem serve`, SCREAMING_CASE). */
  readonly code: string;
  /** `detail` or `error.message`: for people. */
  readonly message: string | undefined;
  /** `retry`: idem's advice, `same_key`, `new_key` or `never` (a later idem may add more). */
  readonly retry: string | undefined;
  /** `type`: the URL of the code's entry in the error reference. */
  readonly type: string | undefined;
  /** `instance`: a `urn:uuid:…` naming this occurrence, also in the server's log. */
  readonly instance: string | undefined;
  /** `differs`: for a mismatch, what differs from the key's first request. */
  readonly differs: readonly string[] | undefined;
  /** `error.operation`: for `OPERATION_REJECTED`, the operation's own answer. */
  readonly operation: OperationAnswer | undefined;
}

/** The advice that makes a client send the same request again, with the same key. */
export const SAME_KEY: RetryAdvice = "same_key";

function record(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

function text(value: unknown): string | undefined {
  return typeof value === "string" ? value : undefined;
}

/**
 * The idem error document of an answer, if it is one: a 4xx or 5xx whose JSON body is
 * problem+json with a string `code` (layer, `idem proxy`) or `{"error":{"code",...}}`
 * (`idem serve`). A 2xx or 3xx is never an error, whatever its body holds. Members of the
 * wrong type are left out rather than trusted.
 */
export function errorDocument({ response, body }: Exchange): ErrorDocument | undefined {
  if (response.status < 400) return undefined;
  const top = record(body);
  if (top === undefined) return undefined;
  const nested = record(top["error"]);
  const members = nested !== undefined && text(nested["code"]) !== undefined ? nested : top;
  const code = text(members["code"]);
  if (code === undefined) return undefined;
  const differs = members["differs"];
  const operation = record(members["operation"]);
  return {
    code,
    message: text(members === top ? top["detail"] : members["message"]),
    retry: text(members["retry"]),
    type: text(members["type"]),
    instance: text(members["instance"]),
    differs: Array.isArray(differs) ? differs.filter((part): part is string => typeof part === "string") : undefined,
    operation:
      operation !== undefined && typeof operation["status"] === "number"
        ? { status: operation["status"], body: operation["body"] }
        : undefined,
  };
}

/**
 * Whether to send an answer again with the same key: idem's own advice when the answer is
 * one of its errors and carries one (`same_key` retries; `new_key`, `never` and any value a
 * later idem adds are final), else `fallback`, the status-code rule for answers without it
 * (an upstream's own, an intermediary's, or an older idem's).
 */
export function worthRetrying(exchange: Exchange, fallback: (exchange: Exchange) => boolean): boolean {
  const advice = errorDocument(exchange)?.retry;
  return advice === undefined ? fallback(exchange) : advice === SAME_KEY;
}

/** The end of a retry loop. */
export interface LoopEnd {
  /** The last answer; `undefined` if the last request failed without one. */
  readonly exchange: Exchange | undefined;
  /** The rejection of the last request, when it had no answer. */
  readonly error: unknown;
  /** Requests sent. */
  readonly attempts: number;
  /** True when the last outcome was worth retrying but the retries were spent. */
  readonly exhausted: boolean;
  /** True when an earlier request was retried: it may have taken effect without us seeing its answer. */
  readonly ambiguous: boolean;
}

/**
 * Sends one request per attempt until an answer is final (`shouldRetry` says no) or the
 * retries are spent. Network errors are always retried; the caller's signal aborts
 * everything.
 */
export async function retryLoop(
  settings: Settings,
  send: (signal: AbortSignal | null) => Promise<Response>,
  shouldRetry: (exchange: Exchange) => boolean,
  signal: AbortSignal | undefined,
): Promise<LoopEnd> {
  for (let attempts = 1; ; attempts++) {
    if (signal?.aborted) throw signal.reason;
    let exchange: Exchange | undefined;
    let error: unknown;
    try {
      const response = await send(signal ?? null);
      exchange = { response, body: await readBody(response) };
    } catch (caught) {
      if (signal?.aborted) throw signal.reason;
      error = caught;
    }
    const retry = exchange === undefined || shouldRetry(exchange);
    if (!retry || attempts > settings.retries) {
      return { exchange, error, attempts, exhausted: retry, ambiguous: attempts > 1 };
    }
    const retryAfter = exchange === undefined ? undefined : parseRetryAfter(exchange.response.headers.get("retry-after"));
    await sleep(retryDelay(settings, attempts, retryAfter), signal);
  }
}

/** `headers` over `defaults`, as a new `Headers`. */
export function mergeHeaders(defaults: Headers, headers: HeadersInput | undefined): Headers {
  const merged = new Headers(defaults);
  new Headers(headers).forEach((value, name) => merged.set(name, value));
  return merged;
}
