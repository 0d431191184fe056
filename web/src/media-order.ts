/**
 * The ordering rule for media that may arrive out of order (README "Media lanes"): frames of
 * one track can come on a datagram and on a stream, so a later frame can overtake an earlier
 * one. A frame is delivered unless it is older (by `seq`) than the last one delivered for its
 * (room, sender session, track) or that one again, except that a keyframe newer than the last delivered
 * keyframe is always delivered (a decoder waiting for it needs it, late or not).
 */

/** What the rule looks at in a frame. */
export interface OrderedFrame {
  room: string;
  /** The sender's session (`MediaEvent.from.session`). */
  session: string;
  track: number;
  seq: bigint;
  keyframe: boolean;
}

interface TrackState {
  /** `seq` of the last frame delivered. */
  last: bigint;
  /** `seq` of the last keyframe delivered. */
  lastKey?: bigint;
  /** When a frame of this track was last delivered (ms). */
  at: number;
}

/** Tracks remembered at once; past it the least recently delivered is forgotten. */
export const MEDIA_ORDER_MAX_TRACKS = 256;
/**
 * A track with nothing delivered for this long is forgotten, so a sender that starts its
 * `seq` over (a restarted encoder) is heard again after at most this long.
 */
export const MEDIA_ORDER_IDLE_MS = 5000;

/** Per-track state of the ordering rule, bounded in tracks and time. */
export class MediaOrder {
  /** In order of last delivery (a Map iterates in insertion order): the first is the oldest. */
  private readonly tracks = new Map<string, TrackState>();

  constructor(
    private readonly maxTracks = MEDIA_ORDER_MAX_TRACKS,
    private readonly idleMs = MEDIA_ORDER_IDLE_MS,
  ) {}

  /** Whether to deliver `f` (and remember it as delivered). `now`: a clock in ms. */
  accept(f: OrderedFrame, now: number): boolean {
    const key = `${f.room}\u0000${f.session}\u0000${f.track}`;
    let st = this.tracks.get(key);
    if (st && now - st.at > this.idleMs) st = undefined;
    if (st && f.seq <= st.last && !(f.keyframe && (st.lastKey === undefined || f.seq > st.lastKey))) return false;
    const next: TrackState = { last: f.seq, lastKey: f.keyframe ? f.seq : st?.lastKey, at: now };
    this.tracks.delete(key);
    this.tracks.set(key, next);
    if (this.tracks.size > this.maxTracks) this.tracks.delete(this.tracks.keys().next().value as string);
    return true;
  }

  /** Tracks remembered. */
  get size(): number {
    return this.tracks.size;
  }
}
