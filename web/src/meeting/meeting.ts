/**
 * A meeting: N participants in one room, everyone's camera and microphone through the relay.
 *
 * ```ts
 * const meeting = new Meeting(client, "standup");
 * meeting.on("participantJoined", (p) => meeting.attach(p.session, newCanvas(p)));
 * await meeting.join(await navigator.mediaDevices.getUserMedia({ video: true, audio: true }));
 * meeting.setMuted(true);
 * await meeting.leave();
 * ```
 *
 * - Video goes as simulcast layers (`SimulcastSender`, 180p and 360p by default); for each
 *   other participant this side asks the node for one layer (`layerSubscribe`), chosen by the
 *   size of the canvas it is drawn on and by how well that participant's video arrives
 *   (`LayerChoice`: losses, freezes and growing delay move it down, a clean hold-off moves it
 *   up). Audio goes on track 2 with its level, from which the node names the active speaker.
 * - Frames travel as the client sends media: WebTransport datagrams and streams where the
 *   node offers media lanes, else the WebSocket (or WebTransport control stream).
 * - Each participant tells the others whether its microphone and camera are on, as an
 *   unreliable room message of kind `meeting.state` sent on a change and when someone joins.
 * - A call with several callees is a meeting in the call's room: `Meeting.forCall(client, call)`.
 */
import type { SwitchboardClient } from "../client.js";
import type { Call, Participant } from "../gen/switchboard_pb.js";
import { Emitter } from "../emitter.js";
import { RelayedAudio, type RelayAudioStats } from "../media/audio.js";
import { LayerChoice, layerForTile } from "./layer-choice.js";
import { RemoteVideo, type RemoteVideoStats } from "./video-receive.js";
import { DEFAULT_LAYERS, MEETING_VIDEO_TRACK, SimulcastSender, type VideoLayer, type VideoSendStats } from "./video-send.js";

/** The kind of the room messages that carry a participant's microphone and camera state. */
export const MEETING_STATE_KIND = "meeting.state";
/** How often delivery is judged and layer choices are revised, ms. */
export const WINDOW_MS = 1_000;
/** At most this many other participants are shown and decoded (the node bounds layer choices too). */
export const MAX_VIDEO_PARTICIPANTS = 48;
/** A state announcement after a join waits up to this long, so a burst of joins makes one. */
const ANNOUNCE_JITTER_MS = 500;

export interface MeetingOptions {
  /** The simulcast layers this side sends, lowest first (all participants should agree). */
  layers?: readonly VideoLayer[];
}

/** Another participant, as this side knows it. */
export interface MeetingParticipant {
  session: string;
  user: string;
  name: string;
  node: string;
  /** Whether its microphone is on (as it last said). */
  audio: boolean;
  /** Whether its camera is on (as it last said). */
  video: boolean;
  /** The layer this side asks the node for. */
  requestedLayer: number;
  /** The layer of its frames arriving now (undefined: none yet). */
  receivedLayer?: number;
}

export interface MeetingEvents {
  participantJoined: MeetingParticipant;
  participantLeft: MeetingParticipant;
  /** Microphone or camera state, or the layer asked for or received, changed. */
  participantChanged: MeetingParticipant;
  /** The room's active speaker (`session` empty: this side). */
  activeSpeaker: { session: string; user: string; level: number };
}

export interface MeetingStats {
  sent?: VideoSendStats;
  audio: RelayAudioStats;
  /** What arrived of each other participant's video, by session. */
  received: Record<string, RemoteVideoStats & { requestedLayer: number; upHoldOffMs: number; downMoves: number; lastDownReason: string }>;
}

interface Remote {
  info: MeetingParticipant;
  video: RemoteVideo;
  choice: LayerChoice;
  /** The layer asked of the node (acknowledged or in flight). */
  asked: number;
}

/** One meeting in one room. */
export class Meeting {
  /** The active speaker's session (this side's own when it is us), if any yet. */
  speaker?: string;
  private readonly events = new Emitter<MeetingEvents>();
  private readonly remotes = new Map<string, Remote>();
  private readonly layers: readonly VideoLayer[];
  private readonly offs: (() => void)[] = [];
  private sender?: SimulcastSender;
  private audio?: RelayedAudio;
  private timer?: ReturnType<typeof setInterval>;
  private announceTimer?: ReturnType<typeof setTimeout>;
  private muted = false;
  private cameraOff = false;
  private joined = false;
  private left = false;
  /**
   * Presence events since the last snapshot was applied. A `Joined` snapshot is applied when
   * the client hands it over, after presence events read with it were already delivered; these
   * say what it cannot know yet.
   */
  private readonly joinedSince = new Set<string>();
  private readonly leftSince = new Set<string>();
  private forgetTimer?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly client: SwitchboardClient,
    readonly room: string,
    options: MeetingOptions = {},
  ) {
    this.layers = options.layers ?? DEFAULT_LAYERS;
  }

  /** The meeting of a call with several callees: its room. */
  static forCall(client: SwitchboardClient, call: Call, options?: MeetingOptions): Meeting {
    return new Meeting(client, call.room, options);
  }

  /** Whether this browser can send and receive meeting media (WebCodecs). */
  static supported(): boolean {
    return typeof VideoEncoder === "function" && typeof VideoDecoder === "function";
  }

  on<K extends keyof MeetingEvents>(type: K, fn: (ev: MeetingEvents[K]) => void): () => void {
    return this.events.on(type, fn);
  }

  /** The other participants (one per session). */
  participants(): MeetingParticipant[] {
    return [...this.remotes.values()].map((r) => r.info);
  }

  get isMuted(): boolean {
    return this.muted;
  }

  get isCameraOff(): boolean {
    return this.cameraOff;
  }

  /**
   * Join the room and send `local`'s camera and microphone (either may be missing: then this
   * side only watches and listens).
   */
  async join(local?: MediaStream): Promise<void> {
    if (this.joined) throw new Error("already joined");
    this.joined = true;
    const me = () => this.client.welcome?.sessionId;
    this.offs.push(
      this.client.on("participantJoined", (p) => {
        if (p.room !== this.room || !p.participant || p.participant.session === me()) return;
        this.joinedSince.add(p.participant.session);
        this.leftSince.delete(p.participant.session);
        this.forgetEventsSoon();
        this.add(p.participant);
        this.announceSoon();
      }),
      this.client.on("participantLeft", (p) => {
        if (p.room !== this.room || !p.participant) return;
        this.leftSince.add(p.participant.session);
        this.joinedSince.delete(p.participant.session);
        this.forgetEventsSoon();
        this.remove(p.participant.session);
      }),
      this.client.on("state", (st) => {
        // A new connection: the rejoin's snapshot is newer than any event before it.
        if (st.status !== "connected") {
          this.joinedSince.clear();
          this.leftSince.clear();
        }
      }),
      this.client.on("joined", (j) => {
        // After a reconnect the node has forgotten this session's layer choices.
        if (j.room !== this.room) return;
        this.sync(j.joined.participants);
        for (const r of this.remotes.values()) this.ask(r, true);
        this.announceSoon();
      }),
      this.client.on("media", (m) => {
        if (m.room !== this.room || m.track < MEETING_VIDEO_TRACK || m.track >= MEETING_VIDEO_TRACK + this.layers.length) return;
        const r = this.remotes.get(m.from?.session ?? "");
        if (!r) return;
        r.video.onFrame(m, performance.now());
        if (r.info.receivedLayer !== r.video.stats.layer) {
          r.info.receivedLayer = r.video.stats.layer;
          this.events.emit("participantChanged", r.info);
        }
      }),
      this.client.on("message", (m) => {
        if (m.room !== this.room || m.kind !== MEETING_STATE_KIND) return;
        const r = this.remotes.get(m.from?.session ?? "");
        if (!r) return;
        const state = parseState(m.payload);
        if (!state || (state.audio === r.info.audio && state.video === r.info.video)) return;
        r.info.audio = state.audio;
        r.info.video = state.video;
        this.events.emit("participantChanged", r.info);
      }),
      this.client.on("activeSpeaker", (s) => {
        if (s.room !== this.room) return;
        this.speaker = s.session;
        this.events.emit("activeSpeaker", { session: s.session === me() ? "" : s.session, user: s.user, level: s.level });
      }),
    );
    this.audio = new RelayedAudio(this.client, this.room);
    try {
      // The roster comes from the `joined` event above (the snapshot and what followed it).
      await this.client.join(this.room);
      const video = local?.getVideoTracks()[0];
      if (video && SimulcastSender.supported()) {
        this.sender = new SimulcastSender(this.client, this.room, this.layers);
        await this.sender.start(video, () => !this.cameraOff);
      }
      const mic = local?.getAudioTracks()[0];
      if (mic) await this.audio.send(mic, () => !this.muted).catch(() => false);
    } catch (e) {
      await this.leave(); // nothing half-started is left running
      throw e;
    }
    if (this.left) return;
    this.announce();
    this.timer = setInterval(() => this.tick(), WINDOW_MS);
  }

  /** Draw `session`'s video on `canvas`; its displayed height chooses the layer asked for. */
  attach(session: string, canvas: HTMLCanvasElement): void {
    const r = this.remotes.get(session);
    if (!r) return;
    r.video.canvas = canvas;
    this.revise(r, r.choice.setTileLayer(this.tileLayer(r)));
  }

  /** Stop drawing `session`'s video (its layer drops to the lowest). */
  detach(session: string): void {
    const r = this.remotes.get(session);
    if (!r) return;
    r.video.canvas = undefined;
    this.revise(r, r.choice.setTileLayer(0));
  }

  /** Re-read every attached canvas's size (after the layout changed). */
  relayout(): void {
    for (const r of this.remotes.values()) this.revise(r, r.choice.setTileLayer(this.tileLayer(r)));
  }

  setMuted(muted: boolean): void {
    this.muted = muted;
    this.announce();
  }

  setCameraOff(off: boolean): void {
    this.cameraOff = off;
    this.announce();
  }

  /** Testing aid: discard the next `n` frames of `session`'s video as if the network lost them. */
  simulateLoss(session: string, n: number): void {
    this.remotes.get(session)?.video.simulateLoss(n);
  }

  stats(): MeetingStats {
    const received: MeetingStats["received"] = {};
    for (const [s, r] of this.remotes) {
      const c = r.choice;
      received[s] = { ...r.video.stats, requestedLayer: r.asked, upHoldOffMs: c.upHoldOff, downMoves: c.downMoves, lastDownReason: c.lastDownReason };
    }
    return { sent: this.sender?.stats, audio: this.audio?.stats ?? emptyAudioStats(), received };
  }

  /** Stop sending and receiving and leave the room. */
  async leave(): Promise<void> {
    if (this.left) return;
    this.left = true;
    if (this.timer) clearInterval(this.timer);
    if (this.announceTimer) clearTimeout(this.announceTimer);
    if (this.forgetTimer) clearTimeout(this.forgetTimer);
    this.offs.forEach((off) => off());
    this.sender?.stop();
    this.audio?.stop();
    for (const r of this.remotes.values()) r.video.close();
    this.remotes.clear();
    if (this.joined) await this.client.leave(this.room).catch(() => {});
  }

  private tileLayer(r: Remote): number {
    const c = r.video.canvas;
    if (!c) return 0;
    const dpr = typeof devicePixelRatio === "number" ? devicePixelRatio : 1;
    return layerForTile(this.layers, c.clientHeight * dpr);
  }

  /**
   * The events only matter until a snapshot read with them is applied, which happens in the
   * same task (the client hands `joined` over in microtasks): forget them at the next task, so
   * a long meeting's churn does not pile up.
   */
  private forgetEventsSoon(): void {
    if (this.forgetTimer) return;
    this.forgetTimer = setTimeout(() => {
      this.forgetTimer = undefined;
      this.joinedSince.clear();
      this.leftSince.clear();
    }, 0);
  }

  /** Make the roster a `Joined` snapshot, corrected by the presence events that came after it. */
  private sync(list: Participant[]): void {
    const me = this.client.welcome?.sessionId;
    const present = new Set(list.map((p) => p.session));
    for (const s of this.joinedSince) present.add(s);
    for (const s of this.leftSince) present.delete(s);
    for (const s of [...this.remotes.keys()]) if (!present.has(s)) this.remove(s);
    for (const p of list) if (p.session !== me && present.has(p.session)) this.add(p);
    this.joinedSince.clear();
    this.leftSince.clear();
  }

  private add(p: Participant): void {
    if (this.remotes.has(p.session) || this.remotes.size >= MAX_VIDEO_PARTICIPANTS) return;
    const now = performance.now();
    const info: MeetingParticipant = { session: p.session, user: p.user, name: p.name, node: p.node, audio: true, video: true, requestedLayer: 0 };
    const r: Remote = { info, video: new RemoteVideo(this.client, this.room, p.session, this.layers.length), choice: new LayerChoice(this.layers.length, now, 0), asked: 0 };
    this.remotes.set(p.session, r);
    this.events.emit("participantJoined", info);
  }

  private remove(session: string): void {
    const r = this.remotes.get(session);
    if (!r) return;
    r.video.close();
    this.remotes.delete(session);
    this.events.emit("participantLeft", r.info);
  }

  /** Judge each participant's last window and revise the layers asked for. */
  private tick(): void {
    const now = performance.now();
    for (const r of this.remotes.values()) {
      const w = r.video.takeWindow();
      r.choice.setTileLayer(this.tileLayer(r));
      this.revise(r, r.choice.observe(w, now));
    }
  }

  private revise(r: Remote, layer: number): void {
    if (layer === r.asked) return;
    r.asked = layer;
    this.ask(r, false);
  }

  /** Tell the node the layer wanted of `r` (`again`: after a reconnect, even if unchanged). */
  private ask(r: Remote, again: boolean): void {
    if (this.left || (!again && r.info.requestedLayer === r.asked)) return;
    const layer = r.asked;
    r.info.requestedLayer = layer;
    this.events.emit("participantChanged", r.info);
    this.client.layerSubscribe(this.room, r.info.session, layer).catch((e: unknown) => {
      // Refused (the sender left, too many choices) or not connected: a later tick or the
      // rejoin asks again.
      if (r.asked === layer) r.asked = -1;
      console.warn(`meeting: layer ${layer} of ${r.info.session} not set:`, e instanceof Error ? e.message : e);
    });
  }

  /** Announce after a short random wait; announcements asked for meanwhile make one. */
  private announceSoon(): void {
    if (this.announceTimer) return;
    this.announceTimer = setTimeout(() => {
      this.announceTimer = undefined;
      this.announce();
    }, Math.random() * ANNOUNCE_JITTER_MS);
  }

  private announce(): void {
    if (!this.joined || this.left) return;
    const state = JSON.stringify({ audio: !this.muted, video: !this.cameraOff && this.sender !== undefined });
    this.client.publish(this.room, state, { reliable: false, kind: MEETING_STATE_KIND }).catch(() => {});
  }
}

function parseState(payload: Uint8Array): { audio: boolean; video: boolean } | undefined {
  try {
    const v = JSON.parse(new TextDecoder().decode(payload)) as { audio?: unknown; video?: unknown };
    return { audio: v.audio === true, video: v.video === true };
  } catch {
    return undefined;
  }
}

function emptyAudioStats(): RelayAudioStats {
  return { audioFramesEncoded: 0, audioFramesSent: 0, audioFramesReceived: 0, audioFramesDecoded: 0, audioFramesPlayed: 0, audioFramesDropped: 0 };
}
