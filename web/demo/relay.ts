/**
 * Relayed media for a 1:1 call: when the peer-to-peer path fails (or the user asks for it),
 * video goes through Switchboard with the library's meeting pieces, one layer: the camera is
 * encoded with WebCodecs (VP8, `SimulcastSender` with a single 640x480 layer), sent as
 * `Media` frames, decoded on the other side (`RemoteVideo`) and drawn on a canvas. A receiver
 * that loses a frame drops everything up to the next keyframe and asks the sender for one;
 * the sender forces a keyframe when such a request arrives. Audio goes alongside, on its own
 * track (`RelayedAudio` from the library).
 */
import {
  MEETING_VIDEO_TRACK,
  RemoteVideo,
  SimulcastSender,
  type MediaEvent,
  type SwitchboardClient,
  type VideoLayer,
} from "../src/index";

/** The one layer a call sends: the camera's size, at a call's bitrate. */
const layerFor = (width: number, height: number): VideoLayer => ({ width, height, bitrate: 800_000 });

export interface RelayStats {
  framesEncoded: number;
  framesSent: number;
  framesReceived: number;
  framesDecoded: number;
  framesDropped: number;
  keyframeRequestsSent: number;
  keyframeRequestsReceived: number;
}

/** Send one video track to a room and draw what others send on a canvas. */
export class RelayedVideo {
  private sender?: SimulcastSender;
  private readonly remotes = new Map<string, RemoteVideo>();
  private readonly off: () => void;
  private pendingLoss = 0;
  private stopped = false;

  constructor(
    private readonly client: SwitchboardClient,
    private readonly room: string,
    private readonly canvas: HTMLCanvasElement,
  ) {
    this.off = client.on("media", (m) => this.onMedia(m));
  }

  static supported(): boolean {
    return typeof VideoEncoder === "function" && typeof VideoDecoder === "function";
  }

  /** Counters of both directions, for the page's tests. */
  get stats(): RelayStats {
    const sent = this.sender?.stats;
    const got = [...this.remotes.values()].map((r) => r.stats);
    const sum = (f: (s: (typeof got)[number]) => number) => got.reduce((n, s) => n + f(s), 0);
    return {
      framesEncoded: sent?.framesEncoded[0] ?? 0,
      framesSent: sent?.framesSent[0] ?? 0,
      framesReceived: sum((s) => s.framesReceived),
      framesDecoded: sum((s) => s.framesDecoded),
      framesDropped: sum((s) => s.framesLost),
      keyframeRequestsSent: sum((s) => s.keyframeRequests),
      keyframeRequestsReceived: sent?.keyframesRequested[0] ?? 0,
    };
  }

  /** Testing aid: discard the next `n` received frames as if the network lost them. */
  simulateLoss(n: number): void {
    if (this.remotes.size === 0) this.pendingLoss += n;
    for (const r of this.remotes.values()) r.simulateLoss(n);
  }

  /** Start encoding and sending `track` (a camera track) while `isEnabled()` (camera on). */
  async send(track: MediaStreamTrack, isEnabled: () => boolean): Promise<void> {
    const settings = track.getSettings();
    this.sender = new SimulcastSender(this.client, this.room, [layerFor(settings.width ?? 640, settings.height ?? 480)]);
    if (this.stopped) return;
    await this.sender.start(track, isEnabled);
  }

  stop(): void {
    this.stopped = true;
    this.off();
    this.sender?.stop();
    for (const r of this.remotes.values()) r.close();
    this.remotes.clear();
  }

  private onMedia(m: MediaEvent): void {
    if (this.stopped || m.room !== this.room || m.track !== MEETING_VIDEO_TRACK || m.codec !== "vp8") return;
    const session = m.from?.session ?? "";
    let r = this.remotes.get(session);
    if (!r) {
      r = new RemoteVideo(this.client, this.room, session, 1);
      r.canvas = this.canvas;
      if (this.pendingLoss) r.simulateLoss(this.pendingLoss);
      this.pendingLoss = 0;
      this.remotes.set(session, r);
    }
    r.onFrame(m, performance.now());
  }
}
