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
  /** Whether calling again later with the same key may succeed. */
  readonly retryable: boolean;
  /** The parsed body of the last answer, if any. */
  readonly body?: unknown;
  /** The underlying error (the rejection of `fetch`), if any. */
  readonly cause?: unknown;
}

/**
 * A logical attempt that did not produce an answer the caller can use.
 *
 * Thrown by {@link IdempotentClient} when every retry was spent on answers that are worth
 * retrying (network errors, 409 in progress, 5xx that were not replayed), and by
 * {@link CoordinationClient} for those cases and for every error answer of the coordination
 * API (`{"error":{"code","message"}}`).
 *
 * When {@link IdempotencyError.retryable} is true, nothing definitive happened yet: calling
 * again later **with the same {@link IdempotencyError.key}** is safe and either executes
 * once or replays the first result. When it is false, the answer is final for this key
 * (a mismatch, a stored failure, an unknown outcome): a new attempt needs a new key.
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
  /** Whether calling again later with the same key may succeed. */
  readonly retryable: boolean;
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
    this.retryable = details.retryable;
    this.body = details.body;
  }
}
