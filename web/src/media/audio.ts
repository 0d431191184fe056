/**
 * Relayed audio for a room (a 1:1 call's fallback, or a meeting): the microphone is captured
 * with `MediaStreamTrackProcessor`, encoded with WebCodecs (`AudioEncoder`, Opus, 20 ms
 * frames), sent as `Media` frames on track 2 (every Opus frame decodes on its own, so each is
 * sent as a keyframe and a loss needs no keyframe request) with its level (`audioLevel`,
 * -dBov, for the node's active-speaker detection), decoded with `AudioDecoder` and played
 * through an `AudioContext`: each decoded frame becomes an `AudioBufferSourceNode` scheduled
 * right after the previous one, a small jitter buffer ahead of the clock. Frames that would
 * queue more than `MAX_QUEUED_S` are dropped, so the delay stays bounded.
 */
import type { SwitchboardClient } from "../client.js";
import type { MediaEvent } from "../gen/switchboard_pb.js";
import { audioCaptureSupported, captureAudio } from "./capture.js";

export const AUDIO_TRACK = 2;
const CODEC = "opus";
const SAMPLE_RATE = 48_000;
const BITRATE = 32_000;
const FRAME_DURATION_US = 20_000;
/** Playback starts (and restarts after an underrun) this far ahead of the audio clock. */
const JITTER_S = 0.06;
/** More than this much audio scheduled ahead: drop the frame instead of adding delay. */
const MAX_QUEUED_S = 0.2;
/** Queue bounds for the encoder and each decoder. */
const MAX_ENCODE_QUEUE = 10;
const MAX_DECODE_QUEUE = 10;
/** Encoder errors after which this side stops sending audio. */
const MAX_ENCODER_ERRORS = 3;

export interface RelayAudioStats {
  audioFramesEncoded: number;
  audioFramesSent: number;
  audioFramesReceived: number;
  audioFramesDecoded: number;
  /** Decoded frames scheduled for playback. */
  audioFramesPlayed: number;
  /** Received frames not played (queues full, or the audio context not running). */
  audioFramesDropped: number;
}

interface Receiver {
  decoder: AudioDecoder;
  /** `AudioContext` time at which the next decoded frame starts. */
  playhead: number;
}

/**
 * The level of one captured buffer in -dBov as RFC 6464 has it: 0 the loudest, 127 silence
 * (the first channel's RMS; the encoder's input, so it is the level the room hears).
 */
export function audioLevel(data: AudioData): number {
  const n = data.numberOfFrames;
  if (n === 0) return 127;
  const samples = new Float32Array(n);
  try {
    data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
  } catch {
    return 127;
  }
  let sum = 0;
  for (let i = 0; i < n; i++) sum += samples[i] * samples[i];
  return levelFromRms(Math.sqrt(sum / n));
}

/** -dBov (0..127) of a root-mean-square sample value (full scale 1.0). */
export function levelFromRms(rms: number): number {
  if (!(rms > 0)) return 127;
  return Math.max(0, Math.min(127, Math.round(-20 * Math.log10(Math.min(1, rms)))));
}

/** Send the microphone to a room and play what others send. */
export class RelayedAudio {
  readonly stats: RelayAudioStats = {
    audioFramesEncoded: 0,
    audioFramesSent: 0,
    audioFramesReceived: 0,
    audioFramesDecoded: 0,
    audioFramesPlayed: 0,
    audioFramesDropped: 0,
  };
  /** Whether this side's microphone goes through Switchboard (set by `send`). */
  sending = false;
  private encoder?: AudioEncoder;
  /** Input format the encoder is configured for ("rate/channels"). */
  private encoderInput = "";
  private encoderErrors = 0;
  /** The level of the latest captured buffer, sent with the next encoded frame. */
  private level = 127;
  private seq = 0;
  private stopped = false;
  private ctx?: AudioContext;
  private readonly receivers = new Map<string, Receiver>();
  private readonly offs: (() => void)[] = [];
  private captureStop?: () => void;

  constructor(
    private readonly client: SwitchboardClient,
    private readonly room: string,
  ) {
    if (!RelayedAudio.receiveSupported() || typeof document === "undefined") return;
    // Created now, close to the click that started or accepted the call (autoplay policy);
    // resumed on the next click or key press if the browser still suspended it.
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    void this.ctx.resume().catch(() => {});
    const resume = () => {
      if (this.ctx?.state === "suspended") void this.ctx.resume().catch(() => {});
    };
    document.addEventListener("pointerdown", resume);
    document.addEventListener("keydown", resume);
    this.offs.push(
      client.on("media", (m) => this.onMedia(m)),
      () => document.removeEventListener("pointerdown", resume),
      () => document.removeEventListener("keydown", resume),
    );
  }

  /** Capturing and encoding (Chromium: `MediaStreamTrackProcessor` and `AudioEncoder`). */
  static sendSupported(): boolean {
    return typeof AudioEncoder === "function" && audioCaptureSupported();
  }

  static receiveSupported(): boolean {
    return typeof AudioDecoder === "function" && typeof AudioContext === "function";
  }

  /**
   * Start encoding and sending `track` (a microphone track) while `isEnabled()` (not
   * muted). Resolves with whether audio is relayed: false when this browser cannot.
   */
  async send(track: MediaStreamTrack, isEnabled: () => boolean): Promise<boolean> {
    if (this.stopped || !RelayedAudio.sendSupported()) return false;
    const channels = Math.min(2, Math.max(1, track.getSettings().channelCount ?? 1));
    const support = await AudioEncoder.isConfigSupported(this.config(SAMPLE_RATE, channels)).catch(() => ({ supported: false }));
    if (!support.supported || this.stopped) return false;
    this.encoder = this.newEncoder();
    this.captureStop = captureAudio(track, (data) => this.encode(data, isEnabled));
    this.sending = true;
    return true;
  }

  stop(): void {
    this.stopped = true;
    this.captureStop?.();
    this.offs.forEach((off) => off());
    if (this.encoder && this.encoder.state !== "closed") this.encoder.close();
    for (const r of this.receivers.values()) if (r.decoder.state !== "closed") r.decoder.close();
    this.receivers.clear();
    void this.ctx?.close().catch(() => {});
  }

  /** An encoder that sends each chunk; after an error (which closes it) a fresh one. */
  private newEncoder(): AudioEncoder {
    return new AudioEncoder({
      output: (chunk) => {
        const payload = new Uint8Array(chunk.byteLength);
        chunk.copyTo(payload);
        this.stats.audioFramesEncoded++;
        const sent = this.client.sendMedia({
          room: this.room,
          track: AUDIO_TRACK,
          seq: this.seq++,
          timestamp: Math.max(0, Math.round(chunk.timestamp)),
          keyframe: true, // every Opus frame decodes on its own
          codec: CODEC,
          payload,
          audioLevel: this.level,
        });
        if (sent) this.stats.audioFramesSent++;
      },
      error: (e) => this.encoderFailed(e),
    });
  }

  /** Start over with a fresh encoder (configured with the next frame), a few times at most. */
  private encoderFailed(e: unknown): void {
    console.warn("Opus encoder error", e);
    this.encoderInput = "";
    if (this.stopped || !this.sending) return;
    if (++this.encoderErrors >= MAX_ENCODER_ERRORS) {
      console.warn("audio: not relayed (the Opus encoder keeps failing)");
      this.sending = false;
      this.captureStop?.();
      return;
    }
    if (this.encoder && this.encoder.state !== "closed") this.encoder.close();
    this.encoder = this.newEncoder();
  }

  private config(sampleRate: number, numberOfChannels: number): AudioEncoderConfig {
    return {
      codec: CODEC,
      sampleRate,
      numberOfChannels,
      bitrate: BITRATE,
      opus: { frameDuration: FRAME_DURATION_US },
    };
  }

  private encode(data: AudioData, isEnabled: () => boolean): void {
    const enc = this.encoder;
    try {
      if (this.stopped || !enc || enc.state === "closed" || !isEnabled() || data.numberOfChannels > 2) return;
      // The encoder takes the captured format as it is (it resamples to 48 kHz itself);
      // configure it from the first frame, and again if the format changes.
      const input = `${data.sampleRate}/${data.numberOfChannels}`;
      if (input !== this.encoderInput) {
        if (enc.state === "configured") enc.reset();
        enc.configure(this.config(data.sampleRate, data.numberOfChannels));
        this.encoderInput = input;
      }
      if (enc.encodeQueueSize > MAX_ENCODE_QUEUE) return;
      this.level = audioLevel(data);
      enc.encode(data);
    } catch (e) {
      this.encoderFailed(e); // a synchronous failure; asynchronous ones come to the error callback
    } finally {
      data.close();
    }
  }

  private receiver(session: string): Receiver {
    let r = this.receivers.get(session);
    if (r) return r;
    const receiver: Receiver = {
      decoder: new AudioDecoder({
        output: (data) => this.play(receiver, data),
        error: (e) => {
          console.warn("Opus decoder error", e);
          this.receivers.delete(session); // a fresh decoder with the next frame
        },
      }),
      playhead: 0,
    };
    // Opus needs no description for one or two channels; a stereo decoder plays mono too.
    receiver.decoder.configure({ codec: CODEC, sampleRate: SAMPLE_RATE, numberOfChannels: 2 });
    this.receivers.set(session, receiver);
    return receiver;
  }

  private onMedia(m: MediaEvent): void {
    if (this.stopped || m.room !== this.room || m.track !== AUDIO_TRACK || m.codec !== CODEC) return;
    this.stats.audioFramesReceived++;
    const r = this.receiver(m.from?.session ?? "");
    if (r.decoder.state !== "configured" || r.decoder.decodeQueueSize > MAX_DECODE_QUEUE) {
      this.stats.audioFramesDropped++;
      return;
    }
    r.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: Number(m.timestamp), data: m.payload }));
  }

  /** Schedule one decoded frame after the previous one, within the jitter-buffer bound. */
  private play(r: Receiver, data: AudioData): void {
    this.stats.audioFramesDecoded++;
    try {
      const ctx = this.ctx;
      if (this.stopped || !ctx || ctx.state !== "running" || data.numberOfFrames === 0) {
        this.stats.audioFramesDropped++;
        return;
      }
      const now = ctx.currentTime;
      if (r.playhead < now + 0.005) r.playhead = now + JITTER_S; // first frame, or ran dry
      if (r.playhead - now > MAX_QUEUED_S) {
        this.stats.audioFramesDropped++;
        return;
      }
      const buffer = ctx.createBuffer(data.numberOfChannels, data.numberOfFrames, data.sampleRate);
      for (let c = 0; c < data.numberOfChannels; c++) {
        data.copyTo(buffer.getChannelData(c), { planeIndex: c, format: "f32-planar" });
      }
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      source.start(r.playhead);
      r.playhead += buffer.duration;
      this.stats.audioFramesPlayed++;
    } finally {
      data.close();
    }
  }
}
