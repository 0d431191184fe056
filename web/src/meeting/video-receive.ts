/**
 * One remote participant's meeting video as this receiver gets it: the frames of the layer the
 * node forwards (`Media.layer`), decoded with WebCodecs and drawn on the canvas the app
 * attached, and each window's delivery figures for the layer choice (`layer-choice.ts`).
 *
 * Each layer has its own sequence numbers, so a gap is counted only within a layer; a change
 * of layer starts on a keyframe (the node guarantees it). A lost frame (a gap, or a decoder
 * too far behind) drops everything up to the next keyframe and asks the sender for one, at
 * most once per `KEYFRAME_REQUEST_GAP_MS`.
 */
import type { SwitchboardClient } from "../client.js";
import type { MediaEvent } from "../gen/switchboard_pb.js";
import type { DeliveryWindow } from "./layer-choice.js";
import { MEETING_VIDEO_TRACK } from "./video-send.js";

/** At most one keyframe request per sender per this interval. */
const KEYFRAME_REQUEST_GAP_MS = 300;
/** Frames queued in the decoder past which a frame is dropped (and a keyframe awaited). */
const MAX_DECODE_QUEUE = 10;

/** What this receiver got of one participant's video. */
export interface RemoteVideoStats {
  framesReceived: number;
  framesDecoded: number;
  /** Frames decoded, by layer. */
  framesDecodedByLayer: number[];
  /** Bytes received, by layer. */
  bytesByLayer: number[];
  framesLost: number;
  keyframeRequests: number;
  /** The layer of the last frame received (undefined: none yet). */
  layer?: number;
  /** The size of the last decoded frame. */
  width: number;
  height: number;
}

/** Decodes one sender's layered video and measures its delivery. */
export class RemoteVideo {
  readonly stats: RemoteVideoStats;
  canvas?: HTMLCanvasElement;
  private decoder?: VideoDecoder;
  /** Layers of the frames in the decoder, oldest first (outputs come in order). */
  private readonly inDecoder: number[] = [];
  private nextSeq?: bigint;
  private waitKey = true;
  private lastRequest = -Infinity;
  // The current window.
  private windowReceived = 0;
  private windowLost = 0;
  private windowLongestGap = 0;
  /** Arrival time (ms) and capture time (µs) of the last frame. */
  private lastArrival?: number;
  private lastCapture = 0n;
  /** Testing aid: received frames to discard as if the network lost them. */
  private discard = 0;

  constructor(
    private readonly client: SwitchboardClient,
    private readonly room: string,
    readonly session: string,
    layers: number,
  ) {
    this.stats = {
      framesReceived: 0,
      framesDecoded: 0,
      framesDecodedByLayer: new Array(layers).fill(0),
      bytesByLayer: new Array(layers).fill(0),
      framesLost: 0,
      keyframeRequests: 0,
      width: 0,
      height: 0,
    };
  }

  /** Testing aid: discard the next `n` received frames as if the network lost them. */
  simulateLoss(n: number): void {
    this.discard += n;
  }

  /** A media frame of this sender's video (the caller filtered room, sender and track). */
  onFrame(m: MediaEvent, now: number): void {
    const layer = m.layer ?? Math.max(0, m.track - MEETING_VIDEO_TRACK);
    this.stats.framesReceived++;
    if (layer < this.stats.bytesByLayer.length) this.stats.bytesByLayer[layer] += m.payload.byteLength;
    this.arrived(m, now);
    if (this.discard > 0) {
      this.discard--;
      this.lost(1, layer, now);
      return;
    }
    if (layer !== this.stats.layer) {
      // A new layer starts with its own numbering (and, from the node, on a keyframe).
      this.stats.layer = layer;
      this.nextSeq = undefined;
    }
    if (this.nextSeq !== undefined && m.seq > this.nextSeq) {
      this.lost(Number(m.seq - this.nextSeq), layer, now);
    }
    if (this.nextSeq === undefined || m.seq >= this.nextSeq) this.nextSeq = m.seq + 1n;
    if (m.keyframe) this.waitKey = false;
    if (this.waitKey) return this.askKeyframe(layer, now);
    const decoder = this.ensureDecoder();
    if (decoder.state !== "configured" || decoder.decodeQueueSize > MAX_DECODE_QUEUE) {
      this.lost(1, layer, now);
      return;
    }
    this.inDecoder.push(layer);
    decoder.decode(new EncodedVideoChunk({ type: m.keyframe ? "key" : "delta", timestamp: Number(m.timestamp), data: m.payload }));
  }

  /** The window ending now: its figures, and a new window. */
  takeWindow(): DeliveryWindow {
    const w: DeliveryWindow = { received: this.windowReceived, lost: this.windowLost, longestGapMs: this.windowLongestGap };
    this.windowReceived = 0;
    this.windowLost = 0;
    this.windowLongestGap = 0;
    return w;
  }

  close(): void {
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.decoder = undefined;
  }

  private arrived(m: MediaEvent, now: number): void {
    this.windowReceived++;
    if (this.lastArrival !== undefined && m.timestamp >= this.lastCapture) {
      // The wait beyond the time between the two captures: what the path held back (a
      // sender that paused, or skipped frames, sends frames captured that much apart).
      const held = now - this.lastArrival - Number(m.timestamp - this.lastCapture) / 1000;
      this.windowLongestGap = Math.max(this.windowLongestGap, held);
    }
    if (this.lastArrival === undefined || m.timestamp >= this.lastCapture) {
      this.lastArrival = now;
      this.lastCapture = m.timestamp;
    }
  }

  private lost(n: number, layer: number, now: number): void {
    this.stats.framesLost += n;
    this.windowLost += n;
    this.waitKey = true;
    this.askKeyframe(layer, now);
  }

  private askKeyframe(layer: number, now: number): void {
    if (now - this.lastRequest < KEYFRAME_REQUEST_GAP_MS) return;
    this.lastRequest = now;
    if (this.client.requestKeyframe(this.room, this.session, MEETING_VIDEO_TRACK + layer)) this.stats.keyframeRequests++;
  }

  private ensureDecoder(): VideoDecoder {
    if (this.decoder && this.decoder.state !== "closed") return this.decoder;
    this.inDecoder.length = 0;
    const decoder = new VideoDecoder({
      output: (frame) => {
        const layer = this.inDecoder.shift() ?? 0;
        this.stats.framesDecoded++;
        if (layer < this.stats.framesDecodedByLayer.length) this.stats.framesDecodedByLayer[layer]++;
        this.stats.width = frame.displayWidth;
        this.stats.height = frame.displayHeight;
        this.draw(frame);
        frame.close();
      },
      error: (e) => {
        console.warn("VP8 decoder error", e);
        this.decoder = undefined; // a fresh decoder from the next keyframe
        this.waitKey = true;
      },
    });
    decoder.configure({ codec: "vp8" });
    this.decoder = decoder;
    return decoder;
  }

  private draw(frame: VideoFrame): void {
    const c = this.canvas;
    if (!c) return;
    if (c.width !== frame.displayWidth) c.width = frame.displayWidth;
    if (c.height !== frame.displayHeight) c.height = frame.displayHeight;
    c.getContext("2d")?.drawImage(frame, 0, 0);
  }
}
