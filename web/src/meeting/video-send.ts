/**
 * A meeting participant's camera as simulcast layers: each captured frame is encoded once per
 * layer (WebCodecs `VideoEncoder`, VP8, the encoder scales the frame to its layer's size) and
 * each layer goes to the room as its own track (`MEETING_VIDEO_TRACK + layer`, `Media.layer`),
 * with its own sequence numbers and keyframes. The node forwards each receiver the one layer
 * it chose; when a receiver switches (or lost a frame), the node or the receiver asks for a
 * keyframe of a layer and that layer's next frame is one.
 */
import type { SwitchboardClient } from "../client.js";
import { captureVideo, even } from "../media/capture.js";
import type { LayerSize } from "./layer-choice.js";

/** Video layer `l` goes on track `MEETING_VIDEO_TRACK + l` (audio is track 2). */
export const MEETING_VIDEO_TRACK = 10;
/** A keyframe at least this often per layer, so a receiver switching layers does not wait long. */
export const KEYFRAME_EVERY = 90;
/** Frames queued in one layer's encoder past which a captured frame is skipped for it. */
const MAX_ENCODE_QUEUE = 2;
/** Encoder errors after which a layer stops (each one before is answered with a fresh encoder). */
const MAX_ENCODER_ERRORS = 3;

/** One simulcast layer: its size and target bitrate. */
export interface VideoLayer extends LayerSize {
  bitrate: number;
}

/**
 * The default layers: 180p at 150 kbit/s and 360p at 600 kbit/s (what a tile grid of a
 * meeting shows; a top layer of 720p is a third entry for apps with large stages).
 */
export const DEFAULT_LAYERS: readonly VideoLayer[] = [
  { width: 320, height: 180, bitrate: 150_000 },
  { width: 640, height: 360, bitrate: 600_000 },
];

/** Counters of what was sent, by layer. */
export interface VideoSendStats {
  framesCaptured: number;
  /** Frames encoded, by layer. */
  framesEncoded: number[];
  /** Frames handed to the client (not dropped by its lanes), by layer. */
  framesSent: number[];
  /** Bytes handed to the client, by layer. */
  bytesSent: number[];
  /** Keyframes forced by requests (the node's or receivers'), by layer. */
  keyframesRequested: number[];
}

interface Layer {
  spec: VideoLayer;
  config: VideoEncoderConfig;
  encoder: VideoEncoder;
  seq: number;
  frames: number;
  forceKey: boolean;
  errors: number;
}

/** Encode a camera track as layers and send them to `room`. */
export class SimulcastSender {
  readonly stats: VideoSendStats;
  private readonly layers: Layer[] = [];
  private captureStop?: () => void;
  private off?: () => void;
  private stopped = false;

  constructor(
    private readonly client: SwitchboardClient,
    private readonly room: string,
    private readonly specs: readonly VideoLayer[] = DEFAULT_LAYERS,
  ) {
    if (specs.length < 1 || specs.length > 3) throw new Error("1 to 3 layers");
    const zeros = () => specs.map(() => 0);
    this.stats = { framesCaptured: 0, framesEncoded: zeros(), framesSent: zeros(), bytesSent: zeros(), keyframesRequested: zeros() };
  }

  static supported(): boolean {
    return typeof VideoEncoder === "function";
  }

  /** Start encoding `track` while `isEnabled()` (camera on). */
  async start(track: MediaStreamTrack, isEnabled: () => boolean): Promise<void> {
    // The encoder budgets bits per frame from the frame rate: the camera's, not a guess.
    const framerate = Math.min(60, Math.max(1, track.getSettings().frameRate ?? 30));
    for (const [i, spec] of this.specs.entries()) {
      const config: VideoEncoderConfig = {
        codec: "vp8",
        width: even(spec.width),
        height: even(spec.height),
        bitrate: spec.bitrate,
        framerate,
        latencyMode: "realtime",
      };
      const support = await VideoEncoder.isConfigSupported(config);
      if (!support.supported) throw new Error(`this browser cannot encode VP8 at ${spec.width}x${spec.height}`);
      const layer = { spec, config, seq: 0, frames: 0, forceKey: true, errors: 0 } as Layer;
      layer.encoder = this.newEncoder(i, layer);
      this.layers.push(layer);
    }
    if (this.stopped) return this.stop();
    this.off = this.client.on("keyframeRequest", (k) => {
      if (k.room !== this.room) return;
      // A request names the layer (the node's, for a switch) or only the track (a receiver's).
      const i = k.layer ?? k.track - MEETING_VIDEO_TRACK;
      const layer = this.layers[i];
      if (!layer || (k.layer === undefined && (k.track < MEETING_VIDEO_TRACK || k.track >= MEETING_VIDEO_TRACK + this.layers.length))) return;
      layer.forceKey = true;
      this.stats.keyframesRequested[i]++;
    });
    const settings = track.getSettings();
    this.captureStop = captureVideo(track, even(settings.width ?? 640), even(settings.height ?? 360), (frame) => {
      try {
        if (!this.stopped && isEnabled()) this.encode(frame);
      } finally {
        frame.close();
      }
    });
  }

  /**
   * A configured encoder for layer `i`. An error closes it: a fresh one takes over (from a
   * keyframe) a few times, then the layer stops and the others go on.
   */
  private newEncoder(i: number, layer: Layer): VideoEncoder {
    const encoder = new VideoEncoder({
      output: (chunk) => this.send(i, layer, chunk),
      error: (e) => {
        console.warn(`VP8 encoder error (layer ${i})`, e);
        if (this.stopped || ++layer.errors >= MAX_ENCODER_ERRORS) return;
        layer.encoder = this.newEncoder(i, layer);
        layer.forceKey = true;
      },
    });
    encoder.configure(layer.config);
    return encoder;
  }

  stop(): void {
    this.stopped = true;
    this.captureStop?.();
    this.off?.();
    for (const l of this.layers) if (l.encoder.state !== "closed") l.encoder.close();
  }

  private encode(frame: VideoFrame): void {
    this.stats.framesCaptured++;
    for (const l of this.layers) {
      if (l.encoder.state !== "configured" || l.encoder.encodeQueueSize > MAX_ENCODE_QUEUE) continue;
      const keyFrame = l.forceKey || l.frames % KEYFRAME_EVERY === 0;
      l.forceKey = false;
      l.frames++;
      l.encoder.encode(frame, { keyFrame });
    }
  }

  private send(i: number, layer: Layer, chunk: EncodedVideoChunk): void {
    const payload = new Uint8Array(chunk.byteLength);
    chunk.copyTo(payload);
    this.stats.framesEncoded[i]++;
    const sent = this.client.sendMedia({
      room: this.room,
      track: MEETING_VIDEO_TRACK + i,
      layer: i,
      seq: layer.seq++,
      timestamp: Math.max(0, Math.round(chunk.timestamp)),
      keyframe: chunk.type === "key",
      codec: "vp8",
      payload,
    });
    if (sent) {
      this.stats.framesSent[i]++;
      this.stats.bytesSent[i] += payload.byteLength;
    }
  }
}
