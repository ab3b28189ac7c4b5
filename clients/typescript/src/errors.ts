/**
 * What idem advises after one of its errors, so that a client need not guess from the status:
 * the `retry` member of its error documents.
 *
 * - `same_key`: nothing final happened (nothing executed yet, or it is still executing): send
 *   the same request again **with the same key**, after `Retry-After` when there is one.
 * - `new_key`: never use this key again: its answer is final (it belongs to another
 *   request, its outcome is unknown, or the operation's refusal or failure is kept for it):
 *   find out what happened, then send a new request with a new key.
 * - `never`: do not send this request again as it is: it is malformed, too large or not
 *   allowed, and nothing was kept for its key; fix it first.
 *
 * Later versions of idem may add values: treat any other string as final, like `never`.
 */
export type RetryAdvice = "same_key" | "new_key" | "never";

/**
 * An operation's own refusal, as `idem serve` passes it on with `OPERATION_REJECTED`: the
 * operation answered a 4xx (a card declined, a payload it rejects), and that answer is kept
 * for the key.
 */
export interface OperationAnswer {
  /** The operation's 4xx status, also the status of the answer that carried it. */
  readonly status: number;
  /** The operation's body: its JSON, or its text as a string. */
  readonly body: unknown;
}

/** What an {@link IdempotencyError} carries; see its properties. */
export interface IdempotencyErrorDetails {
  /** The HTTP status of the last answer; `undefined` if no answer arrived (network error). */
  readonly status?: number | undefined;
  /** The machine-readable error code of the last answer, if it had one. */
  readonly code?: string | undefined;
  /** The idempotency key of the logical attempt. */
  readonly key: string;
  /** How many HTTP requests were sent, the first one included. */
  readonly attempts: number;
  /**
   * Whether calling again later with the same key may succeed. When `retry` is given, it
   * decides instead: `retryable` is then `retry === "same_key"`.
   */
  readonly retryable: boolean;
  /** idem's advice in the last answer (`same_key`, `new_key`, `never`), if it had one. */
  readonly retry?: string | undefined;
  /** The error reference of the last answer's code (problem `type`, or `error.type`), if any. */
  readonly type?: string | undefined;
  /** The occurrence of the last answer's error (problem `instance`, or `error.instance`), if any. */
  readonly instance?: string | undefined;
  /** For a key mismatch: which parts of the request differ from the key's first one. */
  readonly differs?: readonly string[] | undefined;
  /** For `OPERATION_REJECTED`: the operation's own status and body. */
  readonly operation?: OperationAnswer | undefined;
  /** The parsed body of the last answer, if any. */
  readonly body?: unknown;
  /** The underlying error (the rejection of `fetch`), if any. */
  readonly cause?: unknown;
}

/**
 * A logical attempt that did not produce an answer the caller can use.
 *
 * Thrown by {@link IdempotentClient} when every retry was spent on answers that are worth
 * retrying (network errors, idem's `same_key` errors such as 409 in progress; without
 * advice, 5xx that were not replayed), and by
 * {@link CoordinationClient} for those cases and for every error answer of the coordination
 * API (`{"error":{"code","message"}}`).
 *
 * When {@link IdempotencyError.retryable} is true, nothing definitive happened yet: calling
 * again later **with the same {@link IdempotencyError.key}** is safe and either executes
 * once or replays the first result. When it is false, the answer is final for this key:
 * {@link IdempotencyError.retry} says what to do instead when idem answered it (`new_key`:
 * an unknown outcome, a mismatch, or a result kept for the key, such as `OPERATION_FAILED` or
 * an `OPERATION_REJECTED` whose {@link IdempotencyError.operation} says why: retrying the
 * same key only replays it, so find out what happened, fix the request if it was refused,
 * and use a new key; `never`: the request is malformed or not allowed, fix it first).
 */
export class IdempotencyError extends Error {
  override readonly name: string = "IdempotencyError";
  /** The HTTP status of the last answer; `undefined` if no answer arrived (network error). */
  readonly status: number | undefined;
  /**
   * The error code of the last answer: the problem+json `code` member behind `idem proxy`
   * (e.g. `upstream_unreachable`), or `error.code` of the coordination API
   * (e.g. `IDEMPOTENCY_KEY_MISMATCH`). `undefined` if the answer had none.
   */
  readonly code: string | undefined;
  /** The idempotency key sent on every request of this logical attempt. */
  readonly key: string;
  /** How many HTTP requests were sent, the first one included. */
  readonly attempts: number;
  /**
   * Whether calling again later with the same key may succeed. Always agrees with
   * {@link IdempotencyError.retry} when the answer had one (`same_key` is true, anything
   * else false); without it (network errors, an upstream's or an older idem's answer), true
   * when the retries were spent on answers worth retrying.
   */
  readonly retryable: boolean;
  /**
   * idem's advice in the last answer: `same_key`, `new_key` or `never` (see
   * {@link RetryAdvice}); the problem+json `retry` member behind `idem proxy`, or
   * `error.retry` of the coordination API. `undefined` when the answer had none (no answer,
   * an upstream's own answer, or an idem older than this member).
   */
  readonly retry: string | undefined;
  /**
   * Where the error's code is documented: the problem `type` (also sent as
   * `Link: <type>; rel="describedby"`) or `error.type`, a URL ending in `#<code>`.
   * `undefined` if the answer had none.
   */
  readonly type: string | undefined;
  /**
   * Which occurrence of the error this was: the problem `instance` behind `idem proxy`, or
   * `error.instance` of the coordination API, a `urn:uuid:…` that the server also logs with
   * the error; quote it when you report a problem. `undefined` if the answer had none (an
   * idem older than the member, or an answer that is not idem's).
   */
  readonly instance: string | undefined;
  /**
   * For a key mismatch (`idempotency_key_mismatch`, `IDEMPOTENCY_KEY_MISMATCH`): which parts
   * of the request differ from the key's first request: `method`, `path`, `header`, `body`
   * (for the coordination API, `method` is the operation and `body` the payload).
   * `undefined` for every other error.
   */
  readonly differs: readonly string[] | undefined;
  /**
   * For `OPERATION_REJECTED` (`idem serve`): the operation's own 4xx status (also
   * {@link IdempotencyError.status}) and body, kept for the key and the same on every call
   * with it. `undefined` for every other error.
   */
  readonly operation: OperationAnswer | undefined;
  /** The parsed body of the last answer (JSON or text), if any. */
  readonly body: unknown;

  /**
   * @param message - For people: what happened and what to do.
   * @param details - The status, code, key and attempts of the logical attempt.
   */
  constructor(message: string, details: IdempotencyErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.status = details.status;
    this.code = details.code;
    this.key = details.key;
    this.attempts = details.attempts;
    this.retry = details.retry;
    this.retryable = details.retry === undefined ? details.retryable : details.retry === "same_key";
    this.type = details.type;
    this.instance = details.instance;
    this.differs = details.differs;
    this.operation = details.operation;
    this.body = details.body;
  }
}
