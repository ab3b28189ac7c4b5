/**
 * `@idem/client`: a client SDK for idem, the idempotency gateway and coordination service.
 *
 * - {@link IdempotentClient}: any HTTP API behind `idem proxy` or idem's tower layer; one
 *   `Idempotency-Key` per logical attempt, reused on every retry.
 * - {@link CoordinationClient}: the coordination API of `idem serve` (execute, and the
 *   begin / complete / release flow).
 *
 * @packageDocumentation
 */

export { IdempotentClient } from "./client.js";
export type { IdempotentClientOptions, IdempotentResponse, RequestOptions } from "./client.js";
export { CoordinationClient } from "./coordination.js";
export type {
  Absent,
  Acquired,
  BeginResult,
  Completed,
  CoordinationClientOptions,
  KeyedCallOptions,
  Processing,
  StatusResult,
} from "./coordination.js";
export { IdempotencyError } from "./errors.js";
export type { IdempotencyErrorDetails, OperationAnswer, RetryAdvice } from "./errors.js";
export type { CallOptions, ClientOptions, FetchLike, HeadersInput } from "./shared.js";
