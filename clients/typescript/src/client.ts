import { IdempotencyError } from "./errors.js";
import {
  type CallOptions,
  type ClientOptions,
  type Exchange,
  type HeadersInput,
  type Settings,
  errorDocument,
  joinUrl,
  mergeHeaders,
  resendableBody,
  resolveSettings,
  retryLoop,
  worthRetrying,
} from "./shared.js";

/** Options of {@link IdempotentClient}. */
export type IdempotentClientOptions = ClientOptions;

/** Options of one logical attempt: {@link IdempotentClient.request} and its shorthands. */
export interface RequestOptions extends CallOptions {
  /**
   * The request body, sent identically on every retry: a string, bytes, a `Blob`,
   * `URLSearchParams` or `FormData` as they are, anything else as JSON (with
   * `Content-Type: application/json` unless `headers` sets one). Streams are refused: they
   * cannot be sent twice.
   */
  body?: unknown;
  /** Headers of this request, over the client's. */
  headers?: HeadersInput | undefined;
  /**
   * The idempotency key of this logical attempt. Default: an `Idempotency-Key` in `headers`,
   * else a new one from `generateKey` (a UUID v4). Pass the key you stored if you resume a
   * logical attempt after a crash.
   */
  key?: string | undefined;
}

/** The final answer of a logical attempt. */
export interface IdempotentResponse<T = unknown> {
  /** The HTTP status. */
  readonly status: number;
  /** Whether the status is 2xx. */
  readonly ok: boolean;
  /** The response headers. */
  readonly headers: Headers;
  /** The body: parsed JSON if the content type is JSON (`+json` included), else text. */
  readonly body: T;
  /** True when idem replayed a stored answer (`X-Idempotent-Replayed: true`). */
  readonly replayed: boolean;
  /** The idempotency key sent on every request of this logical attempt. */
  readonly key: string;
  /** How many HTTP requests were sent, the first one included. */
  readonly attempts: number;
  /**
   * When the answer is one of idem's errors: its advice, `same_key`, `new_key` or `never`
   * (see {@link RetryAdvice}); `undefined` for every other answer. `same_key` answers are
   * retried rather than returned: when the retries are spent on them, an
   * {@link IdempotencyError} is thrown instead.
   */
  readonly retry?: string | undefined;
}

const REPLAYED = "x-idempotent-replayed";

function isReplay(response: Response): boolean {
  return response.headers.get(REPLAYED)?.trim().toLowerCase() === "true";
}

/**
 * Whether an answer is worth sending again with the same key.
 *
 * A replay (`X-Idempotent-Replayed: true`) never is: it is the stored outcome, and every
 * retry gets exactly the same one. Otherwise idem's errors say so themselves: their `retry`
 * member is `same_key` (409 `request_in_progress`, 502 `upstream_unreachable`, 503
 * `store_unavailable` / `store_full`…: retried, after `Retry-After` when there is one), or
 * `new_key` / `never` (a mismatch, an unknown outcome, a malformed request: final).
 *
 * Without that member (the upstream's own answer, a load balancer's, an older idem's), the
 * status decides, by the rule idem follows:
 *
 * - 409 without `X-Idempotent-Replayed`: idem's `request_in_progress`; the first request
 *   is still executing, and a retry after `Retry-After` gets its answer. (A 409 that carries
 *   the header, `false` included, is the upstream's own answer, passed through idem's
 *   execution: retrying would only replay it. A 409 `outcome_unknown` says the first
 *   attempt's process died mid-way: final, since idem never executes it again on its own;
 *   check the resource, then use a new key.)
 * - 429 not replayed: a rate limit (the upstream's, passed on, or an intermediary's) means
 *   "not processed, try later": idem releases the key on it (its transient statuses, 429 and
 *   503 by default), so a retry after `Retry-After` with the same key executes. (A 429 that
 *   idem was configured to store comes back replayed, and is final like any replay.)
 * - 5xx, except idem's `upstream_outcome_unknown` 504 (stored: every retry gets it again):
 *   idem's 502 and 503 executed nothing, a 5xx from a load balancer in front of idem says
 *   nothing about whether idem executed (a retry with the same key executes or replays),
 *   and an upstream's own 5xx is either stored (the retry replays it and stops) or, with
 *   `store_server_errors(false)`, released on purpose so that a retry executes.
 * - Nothing else: 2xx and 3xx are answers, and the other 4xx (400, 410, 413, 422…) say the
 *   request itself is wrong for this key; sending it again changes nothing.
 */
function shouldRetry(exchange: Exchange): boolean {
  if (isReplay(exchange.response)) return false;
  return worthRetrying(exchange, (answer) => {
    const { status } = answer.response;
    const code = errorDocument(answer)?.code;
    if (status === 409) return !answer.response.headers.has(REPLAYED) && code !== "outcome_unknown";
    if (status === 429) return true;
    return status >= 500 && code !== "upstream_outcome_unknown";
  });
}

/**
 * An HTTP client for any API behind `idem proxy` or idem's tower layer: each call is **one
 * logical attempt**. It draws one idempotency key, sends it as `Idempotency-Key` on every
 * retry, and retries only what is worth retrying, so a POST retried after a lost answer
 * executes once and gets the first answer replayed.
 *
 * Every final answer is returned, whatever its status (like `fetch`), with idem's advice in
 * {@link IdempotentResponse.retry} when it is one of idem's errors; an
 * {@link IdempotencyError} is thrown only when the retries were spent on network errors or
 * answers worth retrying (idem's `same_key` errors: 409 in progress, 502, 503; without
 * advice, 429 and 5xx that were not replayed).
 *
 * @example
 * ```ts
 * const api = new IdempotentClient({ baseUrl: "http://127.0.0.1:8080" });
 * const charge = await api.post<{ id: string }>("/charges", { body: { amount: 1000 } });
 * charge.status;   // 201
 * charge.replayed; // false the first time; true if a retry got the stored answer
 * ```
 */
export class IdempotentClient {
  readonly #settings: Settings;

  /** @param options - Where the API is, the retry budget and the transport; see {@link ClientOptions}. */
  constructor(options: IdempotentClientOptions) {
    this.#settings = resolveSettings(options);
  }

  /**
   * Sends one logical attempt: the same method, path, headers, body and key on every retry.
   *
   * @param method - The HTTP method, e.g. `POST`. idem covers POST, PUT, PATCH and DELETE by
   *   default; other methods pass through it untouched (and are retried all the same).
   * @param path - The path (and query) under `baseUrl`, e.g. `/charges?expand=customer`.
   * @param options - Body, headers, key and cancellation signal.
   * @returns The final answer with its key and the number of requests sent.
   * @throws {@link IdempotencyError} when the retries were spent (`retryable` is then true:
   *   calling again later with `error.key` is safe).
   * @throws `TypeError` for a body that cannot be sent twice (a stream).
   */
  async request<T = unknown>(method: string, path: string, options: RequestOptions = {}): Promise<IdempotentResponse<T>> {
    const settings = this.#settings;
    const headers = mergeHeaders(settings.headers, options.headers);
    const key = options.key ?? headers.get("idempotency-key") ?? settings.generateKey();
    headers.set("idempotency-key", key);
    const body = await resendableBody(options.body, headers);
    const url = joinUrl(settings.baseUrl, path);
    const verb = method.toUpperCase();

    const end = await retryLoop(
      settings,
      (signal) => settings.fetch(url, { method: verb, headers, body: body ?? null, signal }),
      shouldRetry,
      options.signal,
    );
    const { exchange, attempts } = end;
    const document = exchange === undefined ? undefined : errorDocument(exchange);
    if (exchange !== undefined && !end.exhausted) {
      const { response } = exchange;
      return {
        status: response.status,
        ok: response.ok,
        headers: response.headers,
        body: exchange.body as T,
        replayed: isReplay(response),
        key,
        attempts,
        retry: document?.retry,
      };
    }
    const code = document?.code;
    const what =
      exchange === undefined
        ? `no answer (${end.error instanceof Error ? end.error.message : String(end.error)})`
        : `HTTP ${exchange.response.status}${code === undefined ? "" : ` ${code}`}`;
    throw new IdempotencyError(
      `${verb} ${path}: ${what} after ${attempts} attempt${attempts === 1 ? "" : "s"}; ` +
        `retry later with the same key (${key}) to get the one execution's answer`,
      {
        status: exchange?.response.status,
        code,
        key,
        attempts,
        retryable: true,
        retry: document?.retry,
        type: document?.type,
        instance: document?.instance,
        differs: document?.differs,
        operation: document?.operation,
        body: exchange?.body,
        cause: exchange === undefined ? end.error : undefined,
      },
    );
  }

  /** `POST path`: see {@link IdempotentClient.request}. */
  post<T = unknown>(path: string, options?: RequestOptions): Promise<IdempotentResponse<T>> {
    return this.request<T>("POST", path, options);
  }

  /** `PUT path`: see {@link IdempotentClient.request}. */
  put<T = unknown>(path: string, options?: RequestOptions): Promise<IdempotentResponse<T>> {
    return this.request<T>("PUT", path, options);
  }

  /** `PATCH path`: see {@link IdempotentClient.request}. */
  patch<T = unknown>(path: string, options?: RequestOptions): Promise<IdempotentResponse<T>> {
    return this.request<T>("PATCH", path, options);
  }

  /** `DELETE path`: see {@link IdempotentClient.request}. */
  delete<T = unknown>(path: string, options?: RequestOptions): Promise<IdempotentResponse<T>> {
    return this.request<T>("DELETE", path, options);
  }
}
