/**
 * Media lanes of a WebTransport session, the client's side (README "Media lanes
 * (WebTransport)"): media leaves the ordered control stream so that a lost packet delays only
 * the media it carried.
 *
 * ```text
 * in:  datagrams                        one whole ServerFrame each, no prefix
 *      incoming unidirectional streams  length-prefixed ServerFrame records (one group each;
 *                                       a reset means the group was superseded: normal)
 * out: a frame that fits a datagram     one datagram, unless its group already has a stream
 *      a larger one                     the unidirectional stream of its group: a keyframe
 *                                       starts a group of (room, track), the old one is closed;
 *                                       the rest of the group follows on that stream
 * ```
 *
 * Nothing here waits on the network for long: a frame a lane cannot take at once is dropped
 * (the receiver skips to the next keyframe and asks for one), and everything the node can make
 * the page hold is bounded (record size, streams read at once).
 */
import { encodeRecord, RecordDecoder } from "./framing.js";

export type LaneKind = "datagram" | "stream";

/** The largest record accepted on an incoming stream (the protocol's frame limit). */
export const MAX_LANE_RECORD = 256 * 1024;
/**
 * Incoming streams read at once (the node keeps at most 64 groups open per session); past it
 * the oldest is cancelled: it is the stalest group.
 */
export const MAX_INCOMING_STREAMS = 64;
/**
 * Group streams this client keeps open at once (the node accepts 13 unidirectional streams
 * at a time); past it the least recently used group is closed.
 */
export const MAX_OUTGOING_GROUPS = 8;
/** Bytes given to a group stream and not yet taken by the browser; past it frames are dropped. */
export const MAX_GROUP_BACKLOG = 512 * 1024;
/**
 * Bytes given to all group streams, ended ones included (an aborted stream lets go of its
 * frames only once its current write is done), and not yet taken; past it frames are dropped.
 */
export const MAX_TOTAL_BACKLOG = 2 * 1024 * 1024;
/** Datagrams given to the browser and not yet taken; past it frames are dropped. */
export const MAX_DATAGRAM_BACKLOG = 64;

/** Where a media frame to send belongs. */
export interface LaneFrame {
  room: string;
  track: number;
  keyframe: boolean;
}

/** The parts of a browser `WebTransport` the lanes use (an interface, so tests can fake it). */
export interface LaneSession {
  readonly datagrams: {
    readonly readable: ReadableStream<Uint8Array>;
    /** The outgoing datagrams (newer browsers: `createWritable()`, preferred when present). */
    readonly writable?: WritableStream<Uint8Array>;
    createWritable?(): WritableStream<Uint8Array>;
    readonly maxDatagramSize: number;
  };
  readonly incomingUnidirectionalStreams: ReadableStream<ReadableStream<Uint8Array>>;
  createUnidirectionalStream(): Promise<WritableStream<Uint8Array>>;
}

type Writer = WritableStreamDefaultWriter<Uint8Array>;

interface OutGroup {
  /** Resolves with the stream's writer once it is open (undefined if it could not open). */
  ready: Promise<Writer | undefined>;
  /** Bytes handed over and not yet taken. */
  backlog: number;
  /** Set when a write failed (the node stopped the stream, or the session is gone). */
  failed: boolean;
}

/** The lanes of one WebTransport session. */
export class MediaLanes {
  private closed = false;
  private datagramWriter?: Writer;
  private datagramBacklog = 0;
  /** Bytes given to group streams and not yet taken (see MAX_TOTAL_BACKLOG). */
  private streamBacklog = 0;
  /** Open group streams by (room, track), least recently used first. */
  private readonly groups = new Map<string, OutGroup>();
  /** Incoming streams being read, oldest first, by their cancel functions. */
  private readonly incoming = new Set<() => void>();
  /** Stops the datagram reader and the stream acceptor. */
  private readonly readers = new Set<() => void>();

  /** `onframe`: called with each frame received on a lane. */
  constructor(
    private readonly session: LaneSession,
    private readonly onframe: (frame: Uint8Array, lane: LaneKind) => void,
  ) {
    void this.readDatagrams();
    void this.acceptStreams();
  }

  /** Incoming streams being read now. */
  get incomingStreams(): number {
    return this.incoming.size;
  }

  /** Group streams open now. */
  get outgoingGroups(): number {
    return this.groups.size;
  }

  /**
   * Send one encoded `ClientFrame` carrying `media`. Returns the lane it went on, or
   * `undefined` when it was dropped. Never waits.
   */
  send(frame: Uint8Array, media: LaneFrame): LaneKind | undefined {
    if (this.closed) return undefined;
    const key = `${media.room}\u0000${media.track}`;
    if (media.keyframe) this.endGroup(key);
    // Once a group has a stream, the rest of the group follows on it: a datagram would
    // overtake the stream's retransmissions and reorder the track.
    if (!this.groups.has(key) && frame.length <= this.session.datagrams.maxDatagramSize) {
      return this.sendDatagram(frame) ? "datagram" : undefined;
    }
    return this.sendOnGroup(key, encodeRecord(frame)) ? "stream" : undefined;
  }

  /** Stop reading and writing (the session is gone or going). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const key of [...this.groups.keys()]) this.endGroup(key);
    for (const cancel of [...this.incoming, ...this.readers]) cancel();
    this.datagramWriter?.releaseLock();
  }

  // ---------------------------------------------------------------------------------
  // Out
  // ---------------------------------------------------------------------------------

  private sendDatagram(frame: Uint8Array): boolean {
    if (this.datagramBacklog >= MAX_DATAGRAM_BACKLOG) return false;
    try {
      if (!this.datagramWriter) {
        const d = this.session.datagrams;
        const writable = d.createWritable ? d.createWritable() : d.writable;
        if (!writable) return false;
        this.datagramWriter = writable.getWriter();
      }
    } catch {
      return false;
    }
    this.datagramBacklog++;
    this.datagramWriter.write(frame).then(
      () => this.datagramBacklog--,
      () => this.datagramBacklog--,
    );
    return true;
  }

  private sendOnGroup(key: string, record: Uint8Array): boolean {
    if (this.streamBacklog + record.length > MAX_TOTAL_BACKLOG) return false;
    let group = this.groups.get(key);
    if (group?.failed) {
      this.groups.delete(key);
      group = undefined;
    }
    if (!group) group = this.openGroup(key);
    else {
      // Most recently used last.
      this.groups.delete(key);
      this.groups.set(key, group);
    }
    if (group.backlog + record.length > MAX_GROUP_BACKLOG) {
      // The stream cannot keep up: what it holds is stale. Start over at the next keyframe.
      this.endGroup(key, true);
      return false;
    }
    const g = group;
    g.backlog += record.length;
    this.streamBacklog += record.length;
    // Each write is chained on `ready`: callbacks on one promise run in the order they were
    // added, so the records keep their order even while the stream is still opening.
    g.ready
      .then((w) => {
        if (!w) throw new Error("no stream");
        return w.write(record);
      })
      .then(
        () => {
          g.backlog -= record.length;
          this.streamBacklog -= record.length;
        },
        () => {
          g.backlog -= record.length;
          this.streamBacklog -= record.length;
          g.failed = true;
        },
      );
    return true;
  }

  private openGroup(key: string): OutGroup {
    if (this.groups.size >= MAX_OUTGOING_GROUPS) {
      const lru = this.groups.keys().next().value as string;
      this.endGroup(lru);
    }
    const ready = this.session.createUnidirectionalStream().then(
      (stream) => stream.getWriter(),
      () => undefined,
    );
    const group: OutGroup = { ready, backlog: 0, failed: false };
    this.groups.set(key, group);
    return group;
  }

  /**
   * The group of `key` ends: its stream is closed, or aborted when it still holds frames the
   * browser has not taken (stale by now) or `abort` says so.
   */
  private endGroup(key: string, abort = false): void {
    const group = this.groups.get(key);
    if (!group) return;
    this.groups.delete(key);
    const stale = abort || group.backlog > 0;
    group.ready
      .then((w) => (stale ? w?.abort() : w?.close()))
      .catch(() => {
        /* the stream is already gone */
      });
  }

  // ---------------------------------------------------------------------------------
  // In
  // ---------------------------------------------------------------------------------

  private async readDatagrams(): Promise<void> {
    let reader: ReadableStreamDefaultReader<Uint8Array>;
    try {
      reader = this.session.datagrams.readable.getReader();
    } catch {
      return;
    }
    const stop = () => void reader.cancel().catch(() => {});
    this.readers.add(stop);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) break;
        this.onframe(value, "datagram");
      }
    } catch {
      /* the session closed */
    }
    this.readers.delete(stop);
  }

  private async acceptStreams(): Promise<void> {
    let reader: ReadableStreamDefaultReader<ReadableStream<Uint8Array>>;
    try {
      reader = this.session.incomingUnidirectionalStreams.getReader();
    } catch {
      return;
    }
    const stop = () => void reader.cancel().catch(() => {});
    this.readers.add(stop);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        if (this.closed) {
          void value.cancel().catch(() => {});
          break;
        }
        void this.readStream(value);
      }
    } catch {
      /* the session closed */
    }
    this.readers.delete(stop);
  }

  /** Deliver each record of one group stream until it ends (or is reset: superseded). */
  private async readStream(stream: ReadableStream<Uint8Array>): Promise<void> {
    if (this.incoming.size >= MAX_INCOMING_STREAMS) {
      // The oldest group is the stalest: give it up rather than hold more.
      (this.incoming.values().next().value as () => void)();
    }
    const reader = stream.getReader();
    const cancel = () => {
      this.incoming.delete(cancel);
      void reader.cancel().catch(() => {});
    };
    this.incoming.add(cancel);
    const decoder = new RecordDecoder(MAX_LANE_RECORD);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) break;
        for (const record of decoder.push(value)) this.onframe(record, "stream");
      }
    } catch {
      // A reset (the group was superseded), the session's end, or a record over the limit:
      // the rest of this stream is not wanted.
    }
    cancel();
  }
}
