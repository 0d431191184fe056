/**
 * Exponential backoff with full jitter: attempt n waits a uniformly random time in
 * [0, min(max, base * 2^n)].
 */
export interface BackoffOptions {
  /** First ceiling, in ms (default 250). */
  baseMs?: number;
  /** Largest ceiling, in ms (default 10 000). */
  maxMs?: number;
}

export function backoffDelay(attempt: number, opts: BackoffOptions = {}, random: () => number = Math.random): number {
  const base = opts.baseMs ?? 250;
  const max = opts.maxMs ?? 10_000;
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/** The longest retry hint honoured, in ms: a node's hint is not trusted blindly (nodes give at most 20 s). */
export const MAX_RETRY_HINT_MS = 30_000;

/**
 * The wait before reconnect attempt `attempt` (0-based), in ms. After a refusal that said
 * when to retry (`retryAfterMs`: a node admitting sessions at its rate limit sends `GoAway`
 * before `RATE_LIMITED`), that hint plus up to 10 % jitter, at most `MAX_RETRY_HINT_MS`;
 * otherwise `backoffDelay`.
 */
export function reconnectDelay(
  attempt: number,
  opts: BackoffOptions = {},
  retryAfterMs?: number,
  random: () => number = Math.random,
): number {
  if (retryAfterMs === undefined) return backoffDelay(attempt, opts, random);
  // The node spreads its hints already; the jitter keeps clients refused together with the
  // same hint (or by a node that does not spread) from coming back in lockstep.
  return Math.floor(Math.min(MAX_RETRY_HINT_MS, retryAfterMs * (1 + 0.1 * random())));
}
