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
