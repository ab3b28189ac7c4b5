import { IdempotencyError } from "./errors.js";
import {
  type CallOptions,
  type ClientOptions,
  type Exchange,
  type LoopEnd,
  type Settings,
  errorDocument,
  joinUrl,
  mergeHeaders,
  parseRetryAfter,
  resolveSettings,
  retryLoop,
  worthRetrying,
} from "./shared.js";

/** Options of {@link CoordinationClient}. */
export type CoordinationClientOptions = ClientOptions;

/** Options of {@link CoordinationClient.execute} and {@link CoordinationClient.begin}. */
export interface KeyedCallOptions extends CallOptions {
  /**
   * The idempotency key of this logical operation. Default: a new UUID v4 from
   * `generateKey`. Pass your own (stored with the work it belongs to) to resume or poll the
   * same operation later.
   */
  key?: string | undefined;
}

/** {@link CoordinationClient.begin}: the key is yours; execute, then complete or release. */
export interface Acquired {
  /** Always `acquired`. */
  readonly status: "acquired";
  /** The idempotency key. */
  readonly key: string;
  /**
   * The fencing token to pass to {@link CoordinationClient.complete} or
   * {@link CoordinationClient.release}: a decimal 64-bit integer, kept as a string (a
   * `number` would lose digits). Never convert it.
   */
  readonly leaseToken: string;
  /**
   * When the lease lapses unless renewed, in Unix milliseconds (by the server's clock: an
   * estimate). A lapsed lease leaves the key of unknown outcome (`OUTCOME_UNKNOWN`).
   */
  readonly leaseExpiresAt: number;
  /**
   * How long the lease lasts, in milliseconds: call {@link CoordinationClient.renew} every
   * third of this while you execute.
   */
  readonly leaseMs: number;
}

/** The key's operation finished: `result` is the stored result, the same on every call. */
export interface Completed<T = unknown> {
  /** Always `completed`. */
  readonly status: "completed";
  /** The idempotency key. */
  readonly key: string;
  /** The operation's JSON result. */
  readonly result: T;
}

/** Another execution holds the key: ask again later with the same key. */
export interface Processing {
  /** Always `processing`. */
  readonly status: "processing";
  /** The idempotency key. */
  readonly key: string;
  /** The server's `Retry-After`, in milliseconds, if it sent one. */
  readonly retryAfterMs: number | undefined;
}

/** No record for the key: never used, released, or expired. */
export interface Absent {
  /** Always `absent`. */
  readonly status: "absent";
  /** The idempotency key. */
  readonly key: string;
}

/** The answer of {@link CoordinationClient.begin}. */
export type BeginResult<T = unknown> = Acquired | Completed<T> | Processing;

/** The answer of {@link CoordinationClient.status}. */
export type StatusResult<T = unknown> = Completed<T> | Processing | Absent;

const EXECUTE = "/v1/idempotency/execute";
const RECORDS = "/v1/idempotency/records";

/** `error.code` of a coordination API error answer, if it is one. */
function errorCode(exchange: Exchange): string | undefined {
  return errorDocument(exchange)?.code;
}

/**
 * Whether an error answer is worth sending again with the same key: its `error.retry` says
 * so when it has one (`same_key`: `STORE_UNAVAILABLE`, `STORE_FULL`,
 * `OPERATION_UNREACHABLE`, `INTERNAL`…; `new_key` and `never` are final). Without it (an
 * intermediary's answer, an older idem's): answers that executed nothing and may change,
 * 503 (`STORE_UNAVAILABLE`, or a proxy in front), 502 `OPERATION_UNREACHABLE` (the key was
 * released), and any 5xx without a coordination error code (a load balancer's: a retry with
 * the same key executes or replays). Stored answers (`OPERATION_FAILED`,
 * `OPERATION_INVALID_RESPONSE`, `OPERATION_OUTCOME_UNKNOWN`) and an older idem's `INTERNAL`
 * are final, and so is every 4xx.
 */
function transient(exchange: Exchange): boolean {
  return worthRetrying(exchange, (answer) => {
    const { status } = answer.response;
    if (status < 500) return false;
    const code = errorCode(answer);
    return status === 503 || code === undefined || code === "OPERATION_UNREACHABLE";
  });
}

function jsonEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return (
    ka.length === kb.length &&
    ka.every((k) => Object.hasOwn(b, k) && jsonEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]))
  );
}

function checkToken(leaseToken: string): void {
  if (typeof leaseToken !== "string" || !/^\d+$/.test(leaseToken)) {
    throw new TypeError("leaseToken must be the decimal string from begin(), never a number: a number loses digits");
  }
}

/**
 * A client for idem's coordination service (`idem serve`): run a registered operation at
 * most once per key ({@link CoordinationClient.execute}), or execute yourself under a lease
 * ({@link CoordinationClient.begin}, then {@link CoordinationClient.complete} or
 * {@link CoordinationClient.release}).
 *
 * Keys are scoped by the `Authorization` header: set it in `headers` if the service sits
 * behind authentication.
 *
 * @example
 * ```ts
 * const idem = new CoordinationClient({ baseUrl: "http://127.0.0.1:8081" });
 * const charge = await idem.execute("payment.charge", { amount: 1000 }, { key: orderId });
 * ```
 */
export class CoordinationClient {
  readonly #settings: Settings;

  /** @param options - Where the service is, the retry budget and the transport; see {@link ClientOptions}. */
  constructor(options: CoordinationClientOptions) {
    this.#settings = resolveSettings(options);
  }

  async #call(
    method: string,
    path: string,
    key: string | undefined,
    body: unknown,
    retry: (exchange: Exchange) => boolean,
    signal: AbortSignal | undefined,
  ): Promise<LoopEnd> {
    const settings = this.#settings;
    const headers = mergeHeaders(settings.headers, undefined);
    if (key !== undefined) headers.set("idempotency-key", key);
    let text: string | null = null;
    if (body !== undefined) {
      text = JSON.stringify(body);
      headers.set("content-type", "application/json");
    }
    const url = joinUrl(settings.baseUrl, path);
    return retryLoop(settings, (s) => settings.fetch(url, { method, headers, body: text, signal: s }), retry, signal);
  }

  /** The error for a loop that ended without a usable answer. */
  #failure(what: string, key: string, end: LoopEnd): IdempotencyError {
    const { exchange, attempts } = end;
    const tries = `${attempts} attempt${attempts === 1 ? "" : "s"}`;
    if (exchange === undefined) {
      const reason = end.error instanceof Error ? end.error.message : String(end.error);
      return new IdempotencyError(`${what}: no answer after ${tries} (${reason}); retry later with the same key`, {
        key,
        attempts,
        retryable: true,
        cause: end.error,
      });
    }
    const { status } = exchange.response;
    const document = errorDocument(exchange);
    const code = document?.code;
    const message = document?.message;
    const detail = code === undefined ? `HTTP ${status}` : `HTTP ${status} ${code}${message === undefined ? "" : `: ${message}`}`;
    return new IdempotencyError(`${what}: ${detail} (after ${tries})`, {
      status,
      code,
      key,
      attempts,
      retryable: end.exhausted,
      retry: document?.retry,
      type: document?.type,
      instance: document?.instance,
      differs: document?.differs,
      operation: document?.operation,
      body: exchange.body,
    });
  }

  /**
   * Runs the registered `operation` with `payload` at most once for the key, and returns its
   * result: executed now, or replayed from the first execution.
   *
   * Retried with the same key: 202 processing (after its `Retry-After`), network errors,
   * errors whose `error.retry` is `same_key` (`STORE_UNAVAILABLE`, `STORE_FULL`,
   * `OPERATION_UNREACHABLE`…, after their `Retry-After`) and, from answers without that
   * member, 503 and 5xx from intermediaries.
   *
   * @param operation - A name registered with `idem serve --operation NAME=URL`.
   * @param payload - The operation's JSON input; with `operation`, what makes two calls the same.
   * @param options - The key (default: a new UUID v4) and a cancellation signal.
   * @returns The operation's `result`.
   * @throws {@link IdempotencyError} with the API's `code` and `retry`:
   *   `OPERATION_REJECTED` (the operation's own 4xx, in `operation`; `retry` `new_key`),
   *   `IDEMPOTENCY_KEY_MISMATCH` (`differs` says what; `new_key`),
   *   `OPERATION_OUTCOME_UNKNOWN` (`new_key`), `UNKNOWN_OPERATION`, `OPERATION_FAILED`…
   *   (`retryable` false), or after the retries were spent (`retryable` true; `status` 202
   *   if the operation was still running).
   */
  async execute<T = unknown>(operation: string, payload: unknown, options: KeyedCallOptions = {}): Promise<T> {
    const key = options.key ?? this.#settings.generateKey();
    const end = await this.#call(
      "POST",
      EXECUTE,
      key,
      { operation, payload },
      (exchange) => exchange.response.status === 202 || transient(exchange),
      options.signal,
    );
    if (end.exchange?.response.status === 200 && !end.exhausted) {
      return (end.exchange.body as { result: T }).result;
    }
    throw this.#failure(`execute ${operation}`, key, end);
  }

  /**
   * Begins the two-phase flow: acquires the key for you to execute yourself, or tells you
   * it is completed (with the stored result) or processing elsewhere.
   *
   * A lost answer is retried with the same key; if the lost request had acquired the key,
   * the retry sees `processing` until that lease lapses.
   *
   * @param operation - What you are about to execute (any name; not registered).
   * @param payload - Its input; with `operation`, what makes two calls the same.
   * @param options - The key (default: a new UUID v4) and a cancellation signal.
   * @throws {@link IdempotencyError}: `IDEMPOTENCY_KEY_MISMATCH` (422, `differs` says
   *   what), `OUTCOME_UNKNOWN`, a stored failure replayed, or retries spent on `same_key`
   *   errors (503) or network errors.
   */
  async begin<T = unknown>(operation: string, payload: unknown, options: KeyedCallOptions = {}): Promise<BeginResult<T>> {
    const key = options.key ?? this.#settings.generateKey();
    const end = await this.#call("POST", RECORDS, key, { operation, payload }, transient, options.signal);
    const { exchange } = end;
    if (exchange !== undefined && !end.exhausted) {
      const status = exchange.response.status;
      const body = exchange.body as { lease_token?: unknown; lease_expires_at?: unknown; lease_ms?: unknown; result?: unknown };
      if (status === 201 && typeof body.lease_token === "string") {
        return {
          status: "acquired",
          key,
          leaseToken: body.lease_token,
          leaseExpiresAt: Number(body.lease_expires_at),
          leaseMs: Number(body.lease_ms),
        };
      }
      if (status === 200) return { status: "completed", key, result: body.result as T };
      if (status === 202) {
        return { status: "processing", key, retryAfterMs: parseRetryAfter(exchange.response.headers.get("retry-after")) };
      }
    }
    throw this.#failure(`begin ${operation}`, key, end);
  }

  /**
   * Stores the result of the execution you ran under `leaseToken`; every later
   * {@link CoordinationClient.execute}, {@link CoordinationClient.begin} and
   * {@link CoordinationClient.status} with the key gets it.
   *
   * Retried on network errors and `same_key` errors (503) with the same token. If a retry
   * is refused because the record is already completed with this very result (an earlier
   * request did store it), that is a success.
   *
   * @param key - The key you began with.
   * @param leaseToken - The token from {@link Acquired.leaseToken}, as the string it is.
   * @param result - The JSON result to store.
   * @returns The stored result.
   * @throws {@link IdempotencyError} `LEASE_LOST` (409) if the lease lapsed and was taken
   *   over (or was completed or released already): your result was not stored.
   */
  async complete<T = unknown>(key: string, leaseToken: string, result: T, options: CallOptions = {}): Promise<T> {
    checkToken(leaseToken);
    const path = `${RECORDS}/${encodeURIComponent(key)}`;
    const end = await this.#call("PUT", path, undefined, { lease_token: leaseToken, result }, transient, options.signal);
    const { exchange } = end;
    if (exchange?.response.status === 200 && !end.exhausted) return (exchange.body as { result: T }).result;
    if (end.ambiguous && exchange !== undefined && errorCode(exchange) === "LEASE_LOST") {
      const now = await this.status<T>(key, options);
      const sent: unknown = JSON.parse(JSON.stringify(result ?? null));
      if (now.status === "completed" && jsonEqual(now.result, sent)) return now.result;
    }
    throw this.#failure("complete", key, end);
  }

  /**
   * Keeps the lease while you execute: call it every third of {@link Acquired.leaseMs}. A
   * lease that is not renewed lapses, and the key's outcome becomes unknown to every retry
   * (`OUTCOME_UNKNOWN`): it is never executed again on its own.
   *
   * Retried on network errors and `same_key` errors (503) with the same token (renewing
   * twice is harmless).
   *
   * @param key - The key you began with.
   * @param leaseToken - The token from {@link Acquired.leaseToken}, as the string it is.
   * @returns How long the lease now lasts, in milliseconds.
   * @throws {@link IdempotencyError} `LEASE_LOST` (409) if the lease is no longer yours:
   *   stop executing if you can, your result will not be stored.
   */
  async renew(key: string, leaseToken: string, options: CallOptions = {}): Promise<number> {
    checkToken(leaseToken);
    const path = `${RECORDS}/${encodeURIComponent(key)}/lease`;
    const end = await this.#call("POST", path, undefined, { lease_token: leaseToken }, transient, options.signal);
    const { exchange } = end;
    if (exchange?.response.status === 200 && !end.exhausted) {
      return Number((exchange.body as { lease_ms?: unknown }).lease_ms);
    }
    throw this.#failure("renew", key, end);
  }

  /**
   * Gives the key back without a result (your execution failed and did nothing): the next
   * request with the key executes.
   *
   * Retried on network errors and `same_key` errors (503) with the same token. If a retry is
   * refused and the key is free, an earlier request released it: that is a success.
   *
   * @param key - The key you began with.
   * @param leaseToken - The token from {@link Acquired.leaseToken}, as the string it is.
   * @throws {@link IdempotencyError} `LEASE_LOST` (409) if the lease is no longer yours.
   */
  async release(key: string, leaseToken: string, options: CallOptions = {}): Promise<void> {
    checkToken(leaseToken);
    const path = `${RECORDS}/${encodeURIComponent(key)}?lease_token=${encodeURIComponent(leaseToken)}`;
    const end = await this.#call("DELETE", path, undefined, undefined, transient, options.signal);
    const { exchange } = end;
    if (exchange !== undefined && !end.exhausted && exchange.response.status === 204) return;
    if (end.ambiguous && exchange !== undefined && errorCode(exchange) === "LEASE_LOST") {
      if ((await this.status(key, options)).status === "absent") return;
    }
    throw this.#failure("release", key, end);
  }

  /**
   * Looks a key up: completed (with its result), processing, or absent.
   *
   * @param key - The idempotency key.
   * @throws {@link IdempotencyError} for a stored failure (e.g. `OPERATION_FAILED`, or
   *   `OPERATION_REJECTED` with the operation's answer in `operation`: the record is
   *   completed with an error), `OUTCOME_UNKNOWN`, or retries spent on `same_key` errors
   *   (503) or network errors.
   */
  async status<T = unknown>(key: string, options: CallOptions = {}): Promise<StatusResult<T>> {
    const path = `${RECORDS}/${encodeURIComponent(key)}`;
    const end = await this.#call("GET", path, undefined, undefined, transient, options.signal);
    const { exchange } = end;
    if (exchange !== undefined && !end.exhausted) {
      const status = exchange.response.status;
      if (status === 200) return { status: "completed", key, result: (exchange.body as { result: T }).result };
      if (status === 202) {
        return { status: "processing", key, retryAfterMs: parseRetryAfter(exchange.response.headers.get("retry-after")) };
      }
      if (status === 404 && errorCode(exchange) === "NOT_FOUND") return { status: "absent", key };
    }
    throw this.#failure("status", key, end);
  }
}
