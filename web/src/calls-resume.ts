/**
 * Calls resumed across reconnects (README "Protocol in brief", `Hello{calls}`): call events
 * are published once to the users' inboxes, so a transition made while the client was between
 * connections (the other party ended the call, another device accepted) would never reach
 * it. The client remembers the calls it has seen, names the live ones in the next `Hello`
 * (the node answers each with a `CallEvent` of its current state) and never hands the
 * application a call state older than one it already delivered, nor the same state again.
 */
import { toBinary } from "@bufbuild/protobuf";
import { CallSchema, CallState, type CallEvent } from "./gen/switchboard_pb.js";

/** Calls remembered at most (live ones first; ended ones only to drop stale repeats). */
export const MAX_TRACKED_CALLS = 256;
/** Live calls named in one `Hello` at most: the node looks at no more (`MAX_RESUME_CALLS`). */
export const MAX_RESUME_CALLS = 16;

/** The rank of ENDED: the call is over (not resumed; remembered to drop stale repeats). */
const ENDED = 3;

/** How far a call has got: later states never go back to earlier ones. */
function rank(state: CallState): number {
  switch (state) {
    case CallState.RINGING:
      return 1;
    case CallState.ACCEPTED:
    case CallState.REJECTED:
    case CallState.MISSED:
      return 2;
    case CallState.ENDED:
      return ENDED;
    default:
      return 0;
  }
}

interface Seen {
  /** Rank of the furthest state delivered. */
  rank: number;
  /** The last event delivered: its state and its call record, encoded (none yet: placed). */
  state?: CallState;
  record?: Uint8Array;
}

/**
 * The calls a client has seen: which are live (to resume after a reconnect) and which call
 * events are news (to deliver). Bounded: at most `MAX_TRACKED_CALLS`, the oldest ended call
 * forgotten first.
 */
export class CallTracker {
  /** Call id -> what was delivered, oldest delivery first (a delivery moves it last). */
  private readonly calls = new Map<string, Seen>();

  /** Calls remembered. */
  get size(): number {
    return this.calls.size;
  }

  /**
   * Record a received call event; `false` if the application must not get it: its state is
   * older than one already delivered (a resumed state crossing a live event), or it repeats
   * the last one delivered (same state, same call record: the node re-sends states when a
   * call is resumed or repaired; who sent it does not make it new).
   */
  accept(ev: CallEvent): boolean {
    const call = ev.call;
    if (!call?.id) return true; // nothing to tell it apart by
    const r = rank(ev.state);
    const record = toBinary(CallSchema, call);
    const seen = this.calls.get(call.id);
    if (seen && (r < seen.rank || (seen.state === ev.state && seen.record && sameBytes(seen.record, record)))) return false;
    this.remember(call.id, { rank: r, state: ev.state, record });
    return true;
  }

  /**
   * A call this client placed (the invitation's `Ack.call`): live from now on, even if the
   * connection drops before its first event arrives.
   */
  placed(id: string): void {
    if (!this.calls.has(id)) this.remember(id, { rank: rank(CallState.RINGING) });
  }

  /** The calls not ended, most recently delivered first, at most `MAX_RESUME_CALLS`: `Hello.calls`. */
  live(): string[] {
    const live: string[] = [];
    for (const [id, seen] of this.calls) if (seen.rank < ENDED) live.push(id);
    return live.reverse().slice(0, MAX_RESUME_CALLS);
  }

  private remember(id: string, seen: Seen): void {
    this.calls.delete(id);
    this.calls.set(id, seen);
    if (this.calls.size <= MAX_TRACKED_CALLS) return;
    // Forget the oldest ended call, else the oldest call.
    let victim = this.calls.keys().next().value as string;
    for (const [other, s] of this.calls) {
      if (s.rank === ENDED) {
        victim = other;
        break;
      }
    }
    this.calls.delete(victim);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
