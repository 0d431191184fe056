/**
 * Relayed media: when the peer-to-peer path fails (or the user asks for it), video is
 * encoded with WebCodecs (VP8), sent as `Media` frames through Switchboard, decoded on the
 * other side and drawn on a canvas. A receiver that loses a frame drops everything up to
 * the next keyframe and asks the sender for one (`KeyframeRequest`); the sender forces a
 * keyframe when the server passes such a request on. Audio goes alongside, on its own track
 * (`RelayedAudio` from the library).
 */
import { captureVideo, even, type MediaEvent, type SwitchboardClient } from "../src/index";

export const VIDEO_TRACK = 1;
/** A keyframe at least this often, so a late joiner does not wait long. */
const KEYFRAME_EVERY = 90;
/** At most one keyframe request per sender per this interval. */
const KEYFRAME_REQUEST_GAP_MS = 300;

export interface RelayStats {
  framesEncoded: number;
  framesSent: number;
  framesReceived: number;
  framesDecoded: number;
  framesDropped: number;
  keyframeRequestsSent: number;
  keyframeRequestsReceived: number;
}

interface Receiver {
  decoder: VideoDecoder;
  nextSeq?: bigint;
  waitKey: boolean;
  lastRequest: number;
}

/** Send one video track to a room and draw what others send on a canvas. */
export class RelayedVideo {
  readonly stats: RelayStats = {
    framesEncoded: 0,
    framesSent: 0,
    framesReceived: 0,
    framesDecoded: 0,
    framesDropped: 0,
    keyframeRequestsSent: 0,
    keyframeRequestsReceived: 0,
  };
  private encoder?: VideoEncoder;
  private forceKey = true;
  private seq = 0;
  private frameCount = 0;
  private stopped = false;
  private readonly receivers = new Map<string, Receiver>();
  private readonly offs: (() => void)[] = [];
  private captureStop?: () => void;
  private simulatedLoss = 0;

  constructor(
    private readonly client: SwitchboardClient,
    private readonly room: string,
    private readonly canvas: HTMLCanvasElement,
  ) {
    this.offs.push(
      client.on("media", (m) => this.onMedia(m)),
      client.on("keyframeRequest", (k) => {
        if (k.room === this.room && k.track === VIDEO_TRACK) {
          this.stats.keyframeRequestsReceived++;
          this.forceKey = true;
        }
      }),
    );
  }

  /** Testing aid: discard the next `n` received frames as if the network lost them. */
  simulateLoss(n: number): void {
    this.simulatedLoss += n;
  }

  static supported(): boolean {
    return typeof VideoEncoder === "function" && typeof VideoDecoder === "function";
  }

  /** Start encoding and sending `track` (a camera track). */
  async send(track: MediaStreamTrack, isEnabled: () => boolean): Promise<void> {
    const settings = track.getSettings();
    const width = even(settings.width ?? 640);
    const height = even(settings.height ?? 480);
    const config: VideoEncoderConfig = {
      codec: "vp8",
      width,
      height,
      bitrate: 800_000,
      framerate: 30,
      latencyMode: "realtime",
    };
    const support = await VideoEncoder.isConfigSupported(config);
    if (!support.supported) throw new Error("this browser cannot encode VP8");
    this.encoder = new VideoEncoder({
      output: (chunk) => {
        const payload = new Uint8Array(chunk.byteLength);
        chunk.copyTo(payload);
        this.stats.framesEncoded++;
        const sent = this.client.sendMedia({
          room: this.room,
          track: VIDEO_TRACK,
          seq: this.seq++,
          timestamp: Math.max(0, Math.round(chunk.timestamp)),
          keyframe: chunk.type === "key",
          codec: "vp8",
          payload,
        });
        if (sent) this.stats.framesSent++;
      },
      error: (e) => console.warn("VP8 encoder error", e),
    });
    this.encoder.configure(config);
    const encode = (frame: VideoFrame) => {
      const enc = this.encoder;
      if (this.stopped || !enc || enc.state !== "configured" || !isEnabled() || enc.encodeQueueSize > 2) {
        frame.close();
        return;
      }
      const keyFrame = this.forceKey || this.frameCount % KEYFRAME_EVERY === 0;
      this.forceKey = false;
      this.frameCount++;
      enc.encode(frame, { keyFrame });
      frame.close();
    };
    this.captureStop = captureVideo(track, width, height, encode);
  }

  stop(): void {
    this.stopped = true;
    this.captureStop?.();
    this.offs.forEach((off) => off());
    if (this.encoder && this.encoder.state !== "closed") this.encoder.close();
    for (const r of this.receivers.values()) if (r.decoder.state !== "closed") r.decoder.close();
    this.receivers.clear();
  }

  private receiver(session: string): Receiver {
    let r = this.receivers.get(session);
    if (r) return r;
    const decoder = new VideoDecoder({
      output: (frame) => {
        this.stats.framesDecoded++;
        if (this.canvas.width !== frame.displayWidth) this.canvas.width = frame.displayWidth;
        if (this.canvas.height !== frame.displayHeight) this.canvas.height = frame.displayHeight;
        this.canvas.getContext("2d")?.drawImage(frame, 0, 0);
        frame.close();
      },
      error: (e) => {
        console.warn("VP8 decoder error", e);
        this.receivers.delete(session); // a fresh decoder, from the next keyframe
      },
    });
    decoder.configure({ codec: "vp8" });
    r = { decoder, waitKey: true, lastRequest: 0 };
    this.receivers.set(session, r);
    return r;
  }

  private onMedia(m: MediaEvent): void {
    if (this.stopped || m.room !== this.room || m.track !== VIDEO_TRACK || m.codec !== "vp8") return;
    const session = m.from?.session ?? "";
    this.stats.framesReceived++;
    if (this.simulatedLoss > 0) {
      this.simulatedLoss--;
      return;
    }
    const r = this.receiver(session);
    if (r.nextSeq !== undefined && m.seq !== r.nextSeq && !m.keyframe) r.waitKey = true; // lost one
    r.nextSeq = m.seq + 1n;
    if (m.keyframe) r.waitKey = false;
    if (r.waitKey) {
      this.stats.framesDropped++;
      const now = performance.now();
      if (now - r.lastRequest > KEYFRAME_REQUEST_GAP_MS) {
        r.lastRequest = now;
        if (this.client.requestKeyframe(this.room, session, VIDEO_TRACK)) this.stats.keyframeRequestsSent++;
      }
      return;
    }
    if (r.decoder.state !== "configured" || r.decoder.decodeQueueSize > 10) {
      r.waitKey = true;
      this.stats.framesDropped++;
      return;
    }
    r.decoder.decode(
      new EncodedVideoChunk({ type: m.keyframe ? "key" : "delta", timestamp: Number(m.timestamp), data: m.payload }),
    );
  }
}
