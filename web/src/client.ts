/**
 * The Switchboard browser client: one API over WebTransport or WebSocket, with
 * heartbeats, request/response matching, auto-reconnect (exponential backoff with full
 * jitter, or a node's retry hint, across a list of nodes), room rejoin with recovery from the
 * last offset seen, calls resumed, token refresh and typed events.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  CallMedia,
  ClientFrameSchema,
  ErrorCode,
  ServerFrameSchema,
  SignalKind,
} from "./gen/switchboard_pb.js";
import type {
  Ack,
  ActiveSpeaker,
  CallEvent,
  ClientFrame,
  GoAway,
  Joined,
  KeyframeRequestEvent,
  Left,
  MediaEvent,
  Message,
  ParticipantJoined,
  ParticipantLeft,
  RoomStats,
  ServerFrame,
  SignalEvent,
  Welcome,
} from "./gen/switchboard_pb.js";
import { reconnectDelay, type BackoffOptions } from "./backoff.js";
import { CallTracker } from "./calls-resume.js";
import { resolveNode, type NodeAddress, type NodeEndpoints } from "./endpoints.js";
import { openWebSocket, openWebTransport, webTransportSupported, type CloseInfo, type Transport, type TransportKind } from "./transport.js";
import { Emitter } from "./emitter.js";
import type { LaneKind, MediaLanes } from "./lanes.js";
import { MediaOrder } from "./media-order.js";
import { iceRenewDelay, toIceServerSet, type IceServer, type IceServerSet } from "./ice.js";

export const PROTOCOL_VERSION = 1;

/** A token, or a function fetching a fresh one (called on each connect and before expiry). */
export type TokenSource = string | (() => Promise<string>);

export type TransportPreference = "auto" | TransportKind;

export interface ClientOptions {
  /** Nodes to connect to, tried in turn when one fails. */
  nodes: NodeAddress[];
  token: TokenSource;
  /** `auto` (default): WebTransport when the browser has it and the node answers, else WebSocket. */
  transport?: TransportPreference;
  /** Client description sent in Hello. */
  client?: string;
  /** Reconnect after a connection is lost (default true). */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** Time allowed to open a transport and get `Welcome` (default 5000 ms). */
  connectTimeoutMs?: number;
  /** Time allowed for a request's answer (default 10 000 ms). */
  requestTimeoutMs?: number;
  /**
   * Over WebTransport, ask for media lanes (default true): media on QUIC datagrams and
   * per-group streams instead of the control stream, when the node agrees
   * (`Welcome.media_lanes`). The API is the same either way; see `mediaStats()`.
   */
  mediaLanes?: boolean;
}

/**
 * Relayed media counters (`client.mediaStats()`), since the client was created. `lanes`:
 * whether the current session has media lanes.
 */
export interface MediaStats {
  lanes: boolean;
  /** Media frames received on datagrams, on streams, on the control stream (or WebSocket). */
  inDatagrams: number;
  inStreams: number;
  inControl: number;
  /** Media frames sent on datagrams, on streams, on the control stream (or WebSocket). */
  outDatagrams: number;
  outStreams: number;
  outControl: number;
  /** Received frames not delivered: older than what was already delivered of their track. */
  staleDropped: number;
  /** Frames `sendMedia` dropped: their lane could not take them at once. */
  sendDropped: number;
}

export type ConnectionStatus = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ConnectionState {
  status: ConnectionStatus;
  transport?: TransportKind;
  /** The node id from `Welcome`. */
  node?: string;
  /** The URL connected (or being tried). */
  url?: string;
  session?: string;
  /** Reconnect attempt (0 for the first try after a loss). */
  attempt?: number;
  /** Why the last connection ended or failed. */
  error?: string;
}

/**
 * An error answered by the server (or a local failure: code UNSPECIFIED/UNAVAILABLE).
 * `retryAfterMs`: the node refused the session for now and said when to retry (a `GoAway`
 * before its refusal, e.g. RATE_LIMITED while it admits sessions at its rate limit).
 */
export class SwitchboardError extends Error {
  constructor(
    public readonly code: ErrorCode,
    message: string,
    public readonly fatal = false,
    public readonly retryAfterMs?: number,
  ) {
    super(`${ErrorCode[code] ?? code}: ${message}`);
    this.name = "SwitchboardError";
  }
}

/**
 * The error behind a close: the server closes with 4000 + `ErrorCode` (the same code as its
 * fatal `Error` frame, should that frame be lost); anything else is UNAVAILABLE.
 */
function closeError(info: CloseInfo, what: string, retryAfterMs?: number): SwitchboardError {
  const detail = `${what} (${info.code}${info.reason ? ` ${info.reason}` : ""})`;
  if (info.code >= 4000 && info.code < 5000 && ErrorCode[info.code - 4000] !== undefined) {
    return new SwitchboardError(info.code - 4000, detail, true, retryAfterMs);
  }
  return new SwitchboardError(ErrorCode.UNAVAILABLE, detail, false, retryAfterMs);
}

/** Any failure as a `SwitchboardError` (local ones as UNAVAILABLE). */
function asSwitchboardError(e: unknown): SwitchboardError {
  return e instanceof SwitchboardError ? e : new SwitchboardError(ErrorCode.UNAVAILABLE, e instanceof Error ? e.message : String(e));
}

/** Errors after which the client does not reconnect: retrying cannot help. */
const FINAL_ERRORS = new Set<ErrorCode>([
  ErrorCode.TOKEN_INVALID,
  ErrorCode.TOKEN_EXPIRED,
  ErrorCode.TOKEN_NOT_YET_VALID,
  ErrorCode.TOKEN_ALGORITHM,
  ErrorCode.KICKED,
  ErrorCode.FORBIDDEN,
  ErrorCode.BANNED,
  ErrorCode.UNSUPPORTED_VERSION,
]);

export interface JoinedEvent {
  room: string;
  joined: Joined;
  /** True when this join was a rejoin after a reconnect (with `resume_from`). */
  resumed: boolean;
}

export interface ClientEvents {
  state: ConnectionState;
  welcome: Welcome;
  joined: JoinedEvent;
  left: Left;
  message: Message;
  participantJoined: ParticipantJoined;
  participantLeft: ParticipantLeft;
  /**
   * `RoomStats{room, participantCount}`: in rooms above the node's presence-event limit
   * (`--presence-events-max`, 500) there are no `participantJoined` / `participantLeft`
   * events; the node sends the room's cluster-wide count instead, at most once per heartbeat
   * and only when it changed (droppable: a later one carries the latest count).
   */
  roomStats: RoomStats;
  /**
   * A joined room's participant count changed (`participantCount(room)`): from `Joined`,
   * a presence event or `RoomStats`.
   */
  participantCount: { room: string; count: number };
  signal: SignalEvent;
  call: CallEvent;
  media: MediaEvent;
  /** A receiver asks for a keyframe; with `layer` set, of that simulcast layer (a receiver switches to it). */
  keyframeRequest: KeyframeRequestEvent;
  /**
   * The room's active speaker changed: the loudest sender of audio levels
   * (`sendMedia({ audioLevel })`), smoothed, at most one change a second per room.
   */
  activeSpeaker: ActiveSpeaker;
  /** Errors not tied to a pending request (and every fatal one). */
  error: SwitchboardError;
  goAway: GoAway;
  /** `Joined.history_gap`: messages were missed and are not in history; reload state. */
  gap: { room: string };
  tokenRefreshed: { expiresAt: number };
  /** New ICE servers (fresh TURN credentials): from `Welcome`, a renewal or `refreshIceServers()`. */
  iceServers: IceServerSet;
}

export type SignalKindName = "offer" | "answer" | "ice" | "custom";
const SIGNAL_KINDS: Record<SignalKindName, SignalKind> = {
  offer: SignalKind.OFFER,
  answer: SignalKind.ANSWER,
  ice: SignalKind.ICE,
  custom: SignalKind.CUSTOM,
};

export interface SignalOptions {
  /** The room both share (empty with `call`: the call's parties' inboxes). */
  room?: string;
  toUser?: string;
  toSession?: string;
  kind: SignalKindName;
  payload: Uint8Array | string;
  call?: string;
}

export interface MediaFrame {
  room: string;
  track: number;
  seq: bigint | number;
  /** Microseconds. */
  timestamp: bigint | number;
  keyframe: boolean;
  codec: string;
  payload: Uint8Array;
  /**
   * Simulcast: the layer this track carries (0 the lowest, at most 2); send each layer as its
   * own track. Receivers get the layer they chose (`layerSubscribe`), layer 0 by default.
   */
  layer?: number;
  /** Audio: the frame's level in -dBov, 0 (loudest) to 127 (silence), as in RFC 6464. */
  audioLevel?: number;
}

/** A call record from `GET /api/calls`. */
export interface CallRecord {
  id: string;
  media: string;
  caller: string;
  room: string;
  parties: { user: string; status: string }[];
  state: string;
  outcome: string;
  started_at_ms: number;
  answered_at_ms: number;
  ended_at_ms: number;
  duration_ms: number;
}

interface RoomState {
  /** The offset of the last reliable message seen (or the room's last offset at join). */
  lastOffset?: bigint;
  /** Participants (sessions), cluster-wide: `Joined`, then presence events or `RoomStats`. */
  participantCount?: number;
  /** Offsets of this client's own messages (not echoed live; skipped on replay). */
  own: Set<bigint>;
}

interface Pending {
  resolve: (f: ServerFrame) => void;
  reject: (e: SwitchboardError) => void;
  timer: ReturnType<typeof setTimeout>;
}

type FrameKind = MessageInitShape<typeof ClientFrameSchema>["kind"];

const encoder = new TextEncoder();
const OWN_OFFSETS_KEPT = 1024;

export class SwitchboardClient {
  private readonly events = new Emitter<ClientEvents>();
  private readonly opts: Required<Omit<ClientOptions, "backoff">> & { backoff: BackoffOptions };
  private transport?: Transport;
  private endpoints?: NodeEndpoints;
  private welcomeInfo?: Welcome;
  private stateValue: ConnectionState = { status: "idle" };
  private nextId = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private readonly rooms = new Map<string, RoomState>();
  /** Calls seen: resumed after a reconnect (`Hello.calls`), stale states dropped. */
  private readonly calls = new CallTracker();
  private token = "";
  private stopped = false;
  private nodeIndex = 0;
  private heartbeat?: ReturnType<typeof setInterval>;
  private refreshTimer?: ReturnType<typeof setTimeout>;
  private iceTimer?: ReturnType<typeof setTimeout>;
  private ice: IceServerSet = { iceServers: [], expiresAt: 0 };
  private lastReceived = 0;
  private readonly waiters = new Set<() => void>();
  private loop?: Promise<void>;
  /** Why the client closed for good (what `connect()` rejects with). */
  private closeCause?: SwitchboardError;
  /** The current session's media lanes, if it has them. */
  private lanes?: MediaLanes;
  /** The ordering rule for media that can arrive out of order (sessions with lanes). */
  private mediaOrder?: MediaOrder;
  private readonly stats: Omit<MediaStats, "lanes"> = {
    inDatagrams: 0,
    inStreams: 0,
    inControl: 0,
    outDatagrams: 0,
    outStreams: 0,
    outControl: 0,
    staleDropped: 0,
    sendDropped: 0,
  };

  constructor(options: ClientOptions) {
    if (options.nodes.length === 0) throw new Error("at least one node is required");
    this.opts = {
      transport: "auto",
      client: "switchboard-web/0.1",
      reconnect: true,
      connectTimeoutMs: 5000,
      requestTimeoutMs: 10_000,
      mediaLanes: true,
      backoff: {},
      ...options,
    };
  }

  /** Subscribe to an event; returns the unsubscribe function. */
  on<K extends keyof ClientEvents>(type: K, fn: (ev: ClientEvents[K]) => void): () => void {
    return this.events.on(type, fn);
  }

  get state(): ConnectionState {
    return this.stateValue;
  }
  /** The current session's `Welcome` (undefined while disconnected). */
  get welcome(): Welcome | undefined {
    return this.stateValue.status === "connected" ? this.welcomeInfo : undefined;
  }
  /**
   * The ICE servers the node hands out, as `RTCPeerConnection`'s `iceServers` takes them:
   * STUN, and TURN with credentials valid until `iceServersExpireAt`. Renewed before they
   * expire while connected (`iceServers` event); empty when the node has none.
   */
  get iceServers(): IceServer[] {
    return this.ice.iceServers;
  }
  /** Unix seconds at which the TURN credentials in `iceServers` expire (0: nothing expires). */
  get iceServersExpireAt(): number {
    return this.ice.expiresAt;
  }
  /** Ask the node for fresh ICE servers (new TURN credentials) now. */
  async refreshIceServers(): Promise<IceServer[]> {
    const f = await this.request({ case: "iceServersRequest", value: {} });
    if (f.kind.case !== "iceServers") throw new SwitchboardError(ErrorCode.INTERNAL, `unexpected answer ${f.kind.case}`);
    this.setIceServers(toIceServerSet(f.kind.value));
    return this.ice.iceServers;
  }
  /** The user id of the last session. */
  get user(): string | undefined {
    return this.welcomeInfo?.user;
  }
  /** The node endpoints in use (HTTP origin for the REST API). */
  get node(): NodeEndpoints | undefined {
    return this.endpoints;
  }
  /** The token in use. */
  get currentToken(): string {
    return this.token;
  }
  /** Rooms joined (rejoined after a reconnect). */
  get joinedRooms(): string[] {
    return [...this.rooms.keys()];
  }
  /** Relayed media counters: which lanes media came and went on, and what was dropped. */
  mediaStats(): MediaStats {
    return { lanes: this.lanes !== undefined, ...this.stats };
  }

  /** The last reliable offset seen in a room. */
  lastOffset(room: string): bigint | undefined {
    return this.rooms.get(room)?.lastOffset;
  }

  /**
   * Participants (sessions) in a joined room, cluster-wide, as last known: `Joined`'s
   * `participantCount` (not the length of its list, which stops at 500), kept by
   * `participantJoined` / `participantLeft` events and, in large rooms, by `roomStats`.
   * Undefined for a room not joined (or before its `Joined`).
   */
  participantCount(room: string): number | undefined {
    return this.rooms.get(room)?.participantCount;
  }

  /**
   * Connect, and keep reconnecting when the connection is lost. Resolves with the first
   * `Welcome`; rejects with a `SwitchboardError` on a final error (its `code`: the server's
   * `ErrorCode`, e.g. TOKEN_EXPIRED, or TOO_MANY_CONNECTIONS with `reconnect: false`),
   * or with code UNAVAILABLE on `close()` or when no node could be reached (`reconnect: false`).
   * A node refusing for now with a retry hint (RATE_LIMITED, `retryAfterMs`) is tried again
   * after the hint, not the backoff (with `reconnect: false`, `connect()` rejects with it).
   */
  connect(): Promise<Welcome> {
    if (this.loop) throw new Error("connect() was already called");
    this.stopped = false;
    this.closeCause = undefined;
    const first = new Promise<Welcome>((resolve, reject) => {
      const offs = [
        this.on("welcome", (w) => {
          offs.forEach((f) => f());
          resolve(w);
        }),
        this.on("state", (s) => {
          if (s.status === "closed") {
            offs.forEach((f) => f());
            reject(this.closeCause ?? new SwitchboardError(ErrorCode.UNAVAILABLE, s.error ?? "closed"));
          }
        }),
      ];
    });
    this.loop = this.run();
    return first;
  }

  /** Close for good (no reconnect). */
  close(): void {
    this.stopped = true;
    this.closeCause ??= new SwitchboardError(ErrorCode.UNAVAILABLE, "closed by the client");
    this.transport?.close(1000, "client closed");
    this.setState({ status: "closed", error: "closed by the client" });
  }

  /** Drop the current connection as if the network failed (the client reconnects). */
  dropConnection(): void {
    this.transport?.close(1000, "dropped by the client");
  }

  // ---------------------------------------------------------------------------------
  // Rooms
  // ---------------------------------------------------------------------------------

  /** Join a room (rejoined automatically after reconnects). */
  async join(room: string): Promise<Joined> {
    const state = this.rooms.get(room) ?? { own: new Set<bigint>() };
    this.rooms.set(room, state);
    try {
      const joined = await this.sendJoin(room, state, false);
      return joined;
    } catch (e) {
      this.rooms.delete(room);
      throw e;
    }
  }

  async leave(room: string): Promise<void> {
    this.rooms.delete(room);
    await this.request({ case: "leave", value: { room } });
  }

  /** Publish a room message; resolves with its offset (0 without history). */
  async publish(room: string, payload: Uint8Array | string, opts: { reliable?: boolean; kind?: string } = {}): Promise<bigint> {
    const bytes = typeof payload === "string" ? encoder.encode(payload) : payload;
    const reliable = opts.reliable ?? true;
    const f = await this.request({ case: "publish", value: { room, payload: bytes, reliable, kind: opts.kind ?? "" } });
    const offset = f.kind.case === "ack" ? f.kind.value.offset : 0n;
    const st = this.rooms.get(room);
    if (st && offset > 0n) {
      st.own.add(offset);
      if (st.own.size > OWN_OFFSETS_KEPT) st.own.delete(st.own.values().next().value as bigint);
    }
    return offset;
  }

  // ---------------------------------------------------------------------------------
  // Signaling, calls, media
  // ---------------------------------------------------------------------------------

  async signal(s: SignalOptions): Promise<void> {
    const payload = typeof s.payload === "string" ? encoder.encode(s.payload) : s.payload;
    const target = s.toSession
      ? { case: "toSession" as const, value: s.toSession }
      : { case: "toUser" as const, value: s.toUser ?? "" };
    await this.request({
      case: "signal",
      value: { room: s.room ?? "", target, kind: SIGNAL_KINDS[s.kind], payload, call: s.call ?? "" },
    });
  }

  /** Ring `callees` (user ids); resolves with the call id. */
  async invite(callees: string[], media: "audio" | "video" = "video"): Promise<string> {
    const f = await this.request({
      case: "callInvite",
      value: { callees, media: media === "audio" ? CallMedia.AUDIO : CallMedia.VIDEO },
    });
    const call = f.kind.case === "ack" ? f.kind.value.call : "";
    if (call) this.calls.placed(call);
    return call;
  }

  async answer(call: string, accept: boolean): Promise<void> {
    await this.request({ case: "callAnswer", value: { call, accept } });
  }
  async cancel(call: string): Promise<void> {
    await this.request({ case: "callCancel", value: { call } });
  }
  async end(call: string): Promise<void> {
    await this.request({ case: "callEnd", value: { call } });
  }

  /**
   * Send a relayed media frame (unacknowledged, droppable). With media lanes it goes as a
   * datagram when it fits, else on its group's stream (a keyframe starts a group). False when
   * not connected, or dropped because its lane could not take it at once.
   */
  sendMedia(m: MediaFrame): boolean {
    if (!this.transport || this.stateValue.status !== "connected") return false;
    const frame = create(ClientFrameSchema, {
      id: 0n,
      kind: { case: "media", value: { ...m, seq: BigInt(m.seq), timestamp: BigInt(m.timestamp) } },
    });
    const bytes = toBinary(ClientFrameSchema, frame);
    if (this.lanes) {
      const lane = this.lanes.send(bytes, m);
      if (lane === "datagram") this.stats.outDatagrams++;
      else if (lane === "stream") this.stats.outStreams++;
      else this.stats.sendDropped++;
      return lane !== undefined;
    }
    this.transport.send(bytes);
    this.stats.outControl++;
    return true;
  }

  /**
   * Choose which simulcast layer of `session`'s video this client receives in `room` (0 the
   * lowest, the default). The node switches on the new layer's next keyframe (it asks the
   * sender for one), and may hold this client lower while its link drops media.
   * Rejects with `TOO_MANY_SUBSCRIPTIONS` past the node's bound of senders chosen for.
   */
  async layerSubscribe(room: string, session: string, layer: number): Promise<void> {
    await this.request({ case: "layerSubscribe", value: { room, session, layer } });
  }

  /** Ask `toSession` for a keyframe on `track` in `room`. */
  requestKeyframe(room: string, toSession: string, track: number): boolean {
    return this.sendNow(0n, { case: "keyframeRequest", value: { room, toSession, track } });
  }

  /**
   * This user's call history (newest first), from the HTTP API of `origin` (default: the
   * node connected; readable cross-origin from the node's `--allowed-origins`).
   */
  async callHistory(limit = 20, origin?: string): Promise<CallRecord[]> {
    const http = origin ?? this.endpoints?.http;
    const user = this.user;
    if (!http || !user) throw new Error("not connected");
    const res = await fetch(`${http}/api/calls?user=${encodeURIComponent(user)}&limit=${limit}`, {
      headers: { authorization: `Bearer ${this.token}` },
      cache: "no-store",
    });
    if (!res.ok) throw new Error(`call history: HTTP ${res.status}`);
    return ((await res.json()) as { calls: CallRecord[] }).calls;
  }

  // ---------------------------------------------------------------------------------
  // Requests
  // ---------------------------------------------------------------------------------

  private sendNow(id: bigint, kind: FrameKind): boolean {
    if (!this.transport || this.stateValue.status !== "connected") return false;
    this.sendFrame({ id, kind });
    return true;
  }

  private sendFrame(init: MessageInitShape<typeof ClientFrameSchema>): void {
    const frame: ClientFrame = create(ClientFrameSchema, init);
    this.transport?.send(toBinary(ClientFrameSchema, frame));
  }

  /** Wait until connected (bounded), then send and wait for the answer. */
  private async request(kind: FrameKind, timeoutMs = this.opts.requestTimeoutMs): Promise<ServerFrame> {
    const deadline = Date.now() + timeoutMs;
    await this.untilConnected(timeoutMs);
    return this.requestNow(kind, Math.max(1, deadline - Date.now()));
  }

  private requestNow(kind: FrameKind, timeoutMs: number): Promise<ServerFrame> {
    const id = this.nextId++;
    return new Promise<ServerFrame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new SwitchboardError(ErrorCode.UNAVAILABLE, `no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.sendFrame({ id, kind });
    });
  }

  private untilConnected(timeoutMs: number): Promise<void> {
    if (this.stateValue.status === "connected") return Promise.resolve();
    if (this.stateValue.status === "closed") {
      return Promise.reject(new SwitchboardError(ErrorCode.UNAVAILABLE, "client closed"));
    }
    return new Promise<void>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(done);
        if (this.stateValue.status === "connected") resolve();
        else reject(new SwitchboardError(ErrorCode.UNAVAILABLE, "client closed"));
      };
      const timer = setTimeout(() => {
        this.waiters.delete(done);
        reject(new SwitchboardError(ErrorCode.UNAVAILABLE, `not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.add(done);
    });
  }

  private async sendJoin(room: string, state: RoomState, resumed: boolean): Promise<Joined> {
    const value: { room: string; resumeFrom?: bigint } = { room };
    if (state.lastOffset !== undefined) value.resumeFrom = state.lastOffset;
    const send = resumed ? this.requestNow({ case: "join", value }, this.opts.requestTimeoutMs) : this.request({ case: "join", value });
    const f = await send;
    if (f.kind.case !== "joined") throw new SwitchboardError(ErrorCode.INTERNAL, `unexpected answer ${f.kind.case}`);
    const joined = f.kind.value;
    // Without a resume point yet, start from the room's current end: a reconnect then
    // recovers everything published after this join.
    if (state.lastOffset === undefined || joined.lastOffset > state.lastOffset) {
      if (state.lastOffset === undefined) state.lastOffset = joined.lastOffset;
    }
    if (joined.historyGap) this.events.emit("gap", { room });
    this.events.emit("joined", { room, joined, resumed });
    return joined;
  }

  // ---------------------------------------------------------------------------------
  // Connection loop
  // ---------------------------------------------------------------------------------

  private setState(s: ConnectionState): void {
    this.stateValue = s;
    this.events.emit("state", s);
    if (s.status === "connected" || s.status === "closed") for (const w of [...this.waiters]) w();
  }

  private async getToken(): Promise<string> {
    this.token = typeof this.opts.token === "string" ? this.opts.token : await this.opts.token();
    return this.token;
  }

  private async run(): Promise<void> {
    let attempt = 0;
    let immediate = false;
    const n = this.opts.nodes.length;
    while (!this.stopped) {
      const address = this.opts.nodes[this.nodeIndex % n];
      this.setState({ status: attempt === 0 && !this.welcomeInfo ? "connecting" : "reconnecting", attempt });
      let outcome: { final: boolean; error: string; goAway?: boolean; cause?: SwitchboardError };
      try {
        outcome = await this.session(address);
        if (outcome.final) {
          this.stopped = true;
          this.closeCause ??= outcome.cause;
          this.setState({ status: "closed", error: outcome.error });
          break;
        }
        attempt = 0; // it connected: the next loss starts backing off anew
        immediate = !!outcome.goAway;
      } catch (e) {
        const cause = asSwitchboardError(e);
        outcome = { final: false, error: e instanceof Error ? e.message : String(e), cause };
        if (FINAL_ERRORS.has(cause.code)) {
          this.stopped = true;
          this.closeCause ??= cause;
          this.setState({ status: "closed", error: cause.message });
          break;
        }
      }
      if (this.stopped) break;
      if (!this.opts.reconnect) {
        this.stopped = true;
        this.closeCause ??= outcome.cause ?? new SwitchboardError(ErrorCode.UNAVAILABLE, outcome.error);
        this.setState({ status: "closed", error: outcome.error });
        break;
      }
      // Next try: another node after a failure or a GoAway (the same one otherwise).
      this.nodeIndex = (this.nodeIndex + 1) % n;
      this.setState({ status: "reconnecting", attempt, error: outcome.error });
      // A refusal before Welcome may say when to retry: then wait that, not the backoff.
      const delay = reconnectDelay(attempt, this.opts.backoff, outcome.cause?.retryAfterMs);
      if (!immediate) await new Promise((r) => setTimeout(r, delay));
      immediate = false;
      attempt++;
    }
  }

  /** Open a transport to one node (WebTransport first when allowed). */
  private async open(endpoints: NodeEndpoints): Promise<Transport> {
    const pref = this.opts.transport;
    const timeout = this.opts.connectTimeoutMs;
    const wtPossible = pref !== "websocket" && endpoints.webtransport && webTransportSupported();
    if (pref === "webtransport" && !wtPossible) throw new Error("WebTransport is not available (browser or node)");
    if (wtPossible) {
      try {
        return await openWebTransport(endpoints.webtransport!, endpoints.certificateSha256, timeout);
      } catch (e) {
        if (pref === "webtransport" || !endpoints.websocket) throw e;
      }
    }
    if (!endpoints.websocket) throw new Error("the node has no WebSocket endpoint");
    return openWebSocket(endpoints.websocket, timeout);
  }

  /** One connection, from open to close. Throws if it never got a `Welcome`. */
  private async session(
    address: NodeAddress,
  ): Promise<{ final: boolean; error: string; goAway?: boolean; cause?: SwitchboardError }> {
    const endpoints = await resolveNode(address, this.opts.connectTimeoutMs);
    const token = await this.getToken();
    const transport = await this.open(endpoints);
    this.transport = transport;
    this.endpoints = endpoints;
    let fatal: SwitchboardError | undefined;
    let goAway = false;
    let welcomed = false;
    // A `GoAway` before `Welcome`: the refusal that follows says to retry after this.
    let retryAfterMs: number | undefined;
    const closed = new Promise<{ code: number; reason: string }>((resolve) => {
      transport.onclose = resolve;
    });
    const welcome = new Promise<Welcome>((resolve, reject) => {
      transport.onframe = (bytes) => {
        let f: ServerFrame;
        try {
          f = fromBinary(ServerFrameSchema, bytes);
        } catch {
          return; // not a frame we can read: ignore
        }
        this.lastReceived = Date.now();
        if (f.kind.case === "welcome") {
          welcomed = true;
          resolve(f.kind.value);
          return;
        }
        if (f.kind.case === "error" && f.kind.value.fatal) {
          const e = f.kind.value;
          fatal = new SwitchboardError(e.code, e.message, true, welcomed ? undefined : retryAfterMs);
          if (!welcomed) reject(fatal);
        }
        if (f.kind.case === "goAway") {
          if (!welcomed) {
            // Not a drain but a refusal for now: the node closes the session itself, and the
            // hint goes with the refusal to time the next attempt (it is no `goAway` event).
            retryAfterMs ??= f.kind.value.reconnectAfterMs;
            return;
          }
          goAway = true;
          const after = f.kind.value.reconnectAfterMs;
          setTimeout(() => transport.close(1000, "going away"), after);
        }
        this.dispatch(f);
      };
      closed.then((info) => reject(fatal ?? closeError(info, "closed before Welcome", retryAfterMs)));
    });
    this.setState({ status: this.welcomeInfo ? "reconnecting" : "connecting", url: transport.url, transport: transport.kind });
    const mediaLanes = this.opts.mediaLanes && transport.openMediaLanes !== undefined;
    // `calls`: the live calls seen (none on the first connect); the node answers each with
    // its current state, so a transition made while this client was away is not lost.
    const calls = this.calls.live();
    this.sendFrame({
      id: 0n,
      kind: { case: "hello", value: { protocolVersion: PROTOCOL_VERSION, token, client: this.opts.client, mediaLanes, calls } },
    });
    let w: Welcome;
    try {
      w = await new Promise<Welcome>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no Welcome in time")), this.opts.connectTimeoutMs);
        welcome.then(
          (v) => (clearTimeout(timer), resolve(v)),
          (e) => (clearTimeout(timer), reject(e)),
        );
      });
    } catch (e) {
      transport.close();
      this.transport = undefined;
      throw e;
    }
    this.welcomeInfo = w;
    this.lastReceived = Date.now();
    if (mediaLanes && w.mediaLanes && transport.openMediaLanes) {
      this.mediaOrder = new MediaOrder();
      this.lanes = transport.openMediaLanes((bytes, lane) => this.onLaneFrame(bytes, lane));
    }
    this.startHeartbeat(transport, w.heartbeatMs || 15_000);
    this.scheduleRefresh(Number(w.tokenExpiresAt));
    this.setIceServers(toIceServerSet(w.iceServers));
    this.setState({ status: "connected", transport: transport.kind, node: w.node, url: transport.url, session: w.sessionId });
    this.events.emit("welcome", w);
    // Rejoin rooms, resuming from the last offset seen in each.
    for (const [room, st] of this.rooms) {
      this.sendJoin(room, st, true).catch((e: unknown) => {
        if (e instanceof SwitchboardError && e.code !== ErrorCode.UNAVAILABLE) this.rooms.delete(room);
        this.events.emit("error", e instanceof SwitchboardError ? e : new SwitchboardError(ErrorCode.UNSPECIFIED, String(e)));
      });
    }
    const info = await closed;
    this.stopTimers();
    this.transport = undefined;
    this.lanes?.close();
    this.lanes = undefined;
    this.mediaOrder = undefined;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new SwitchboardError(ErrorCode.UNAVAILABLE, "connection lost"));
      this.pending.delete(id);
    }
    // The close code says the same as a fatal Error frame (4000 + code), if that was lost.
    const cause = fatal ?? closeError(info, "connection closed");
    const final = FINAL_ERRORS.has(cause.code);
    const error = fatal?.message ?? `connection closed (${info.code}${info.reason ? ` ${info.reason}` : ""})`;
    return { final, error, goAway, cause };
  }

  private startHeartbeat(transport: Transport, heartbeatMs: number): void {
    // Ping at least every heartbeat (the server's requirement), and often enough to notice
    // a dead path within a few seconds: nodes answer every Ping with a Pong.
    const every = Math.min(heartbeatMs, 5000);
    let nonce = 0n;
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastReceived > 3 * every) {
        transport.close(1000, "heartbeat lost");
        return;
      }
      this.sendFrame({ id: 0n, kind: { case: "ping", value: { nonce: ++nonce } } });
    }, every);
  }

  private scheduleRefresh(expiresAt: number): void {
    if (typeof this.opts.token === "string" || !expiresAt) return;
    const remaining = expiresAt * 1000 - Date.now();
    const margin = Math.min(60_000, remaining / 2);
    const transport = this.transport;
    this.refreshTimer = setTimeout(async () => {
      try {
        const token = await this.getToken();
        if (this.transport !== transport) return;
        await this.requestNow({ case: "refreshToken", value: { token } }, this.opts.requestTimeoutMs);
        const exp = jwtExpiry(token);
        this.events.emit("tokenRefreshed", { expiresAt: exp });
        this.scheduleRefresh(exp);
      } catch (e) {
        this.events.emit("error", e instanceof SwitchboardError ? e : new SwitchboardError(ErrorCode.UNSPECIFIED, `token refresh: ${e}`));
      }
    }, Math.max(1000, remaining - margin));
  }

  /** Take `set` as the current ICE servers, tell listeners, renew before it expires. */
  private setIceServers(set: IceServerSet): void {
    this.ice = set;
    this.events.emit("iceServers", set);
    clearTimeout(this.iceTimer);
    const delay = iceRenewDelay(set.expiresAt, Date.now());
    if (delay === undefined) return;
    const transport = this.transport;
    this.iceTimer = setTimeout(() => {
      if (this.transport !== transport) return; // a new session brings its own in Welcome
      this.refreshIceServers().catch((e: unknown) =>
        this.events.emit("error", e instanceof SwitchboardError ? e : new SwitchboardError(ErrorCode.UNSPECIFIED, `ICE servers: ${e}`)),
      );
    }, delay);
  }

  private stopTimers(): void {
    clearInterval(this.heartbeat);
    clearTimeout(this.refreshTimer);
    clearTimeout(this.iceTimer);
  }

  private settle(refId: bigint, f: ServerFrame, error?: SwitchboardError): boolean {
    const p = refId ? this.pending.get(refId) : undefined;
    if (!p) return false;
    this.pending.delete(refId);
    clearTimeout(p.timer);
    if (error) p.reject(error);
    else p.resolve(f);
    return true;
  }

  private setParticipantCount(room: string, count: number): void {
    const st = this.rooms.get(room);
    if (!st || st.participantCount === count) return;
    st.participantCount = count;
    this.events.emit("participantCount", { room, count });
  }

  private addParticipants(room: string, delta: number): void {
    const st = this.rooms.get(room);
    if (st?.participantCount !== undefined) this.setParticipantCount(room, Math.max(0, st.participantCount + delta));
  }

  /** A frame from a media lane: media only (anything else has no business there). */
  private onLaneFrame(bytes: Uint8Array, lane: LaneKind): void {
    let f: ServerFrame;
    try {
      f = fromBinary(ServerFrameSchema, bytes);
    } catch {
      return; // not a frame we can read: ignore
    }
    if (f.kind.case !== "media") return;
    this.lastReceived = Date.now();
    if (lane === "datagram") this.stats.inDatagrams++;
    else this.stats.inStreams++;
    this.deliverMedia(f.kind.value);
  }

  /** Deliver a media event, unless the ordering rule finds it stale (lanes only). */
  private deliverMedia(m: MediaEvent): void {
    const order = this.mediaOrder;
    if (order && !order.accept({ ...m, session: m.from?.session ?? "" }, Date.now())) {
      this.stats.staleDropped++;
      return;
    }
    this.events.emit("media", m);
  }

  private dispatch(f: ServerFrame): void {
    const k = f.kind;
    switch (k.case) {
      case "ack":
        this.settle(k.value.refId, f);
        break;
      case "iceServers":
        this.settle(k.value.refId, f);
        break;
      case "joined": {
        // Counted before the request settles: presence events read in the same batch (a
        // WebTransport chunk) are dispatched before the awaiting code resumes.
        const j = k.value;
        this.setParticipantCount(j.room, j.participantCount || j.participants.length);
        this.settle(j.refId, f);
        break;
      }
      case "error": {
        const e = new SwitchboardError(k.value.code, k.value.message, k.value.fatal);
        if (!this.settle(k.value.refId, f, e) || e.fatal) this.events.emit("error", e);
        break;
      }
      case "message": {
        const m = k.value;
        const st = this.rooms.get(m.room);
        if (st && m.offset > 0n) {
          // Recovery: replayed and live deliveries can overlap; keep each offset once.
          if (st.lastOffset !== undefined && m.offset <= st.lastOffset) break;
          st.lastOffset = m.offset;
          if (st.own.has(m.offset)) break; // our own, replayed after a reconnect
        }
        this.events.emit("message", m);
        break;
      }
      case "left":
        this.rooms.delete(k.value.room);
        this.events.emit("left", k.value);
        break;
      case "participantJoined":
        this.addParticipants(k.value.room, 1);
        this.events.emit("participantJoined", k.value);
        break;
      case "participantLeft":
        this.addParticipants(k.value.room, -1);
        this.events.emit("participantLeft", k.value);
        break;
      case "roomStats":
        this.setParticipantCount(k.value.room, k.value.participantCount);
        this.events.emit("roomStats", k.value);
        break;
      case "signal":
        this.events.emit("signal", k.value);
        break;
      case "call":
        if (this.calls.accept(k.value)) this.events.emit("call", k.value);
        break;
      case "media":
        this.stats.inControl++;
        this.deliverMedia(k.value);
        break;
      case "keyframeRequest":
        this.events.emit("keyframeRequest", k.value);
        break;
      case "activeSpeaker":
        this.events.emit("activeSpeaker", k.value);
        break;
      case "goAway":
        this.events.emit("goAway", k.value);
        break;
      case "pong":
      case "welcome":
      case undefined:
        break;
    }
  }
}

/** The `exp` claim of a JWT (0 if unreadable). */
export function jwtExpiry(token: string): number {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))) as { exp?: number };
    return json.exp ?? 0;
  } catch {
    return 0;
  }
}

export type { Ack };
