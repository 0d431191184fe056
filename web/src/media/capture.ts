/**
 * Frames from a camera or microphone track, for WebCodecs encoders.
 *
 * `MediaStreamTrackProcessor` where the browser has it (Chromium); for video elsewhere, frames
 * grabbed from a playing `<video>` about 30 times a second. Each capture works on a clone of
 * the track (stopped with the capture), so stopping it leaves the app's track alone; the
 * clone does not follow the original's `enabled`, so callers check mute per frame.
 */

type Processor<T> = new (o: { track: MediaStreamTrack }) => { readable: ReadableStream<T> };

function trackProcessor<T>(): Processor<T> | undefined {
  return (globalThis as { MediaStreamTrackProcessor?: Processor<T> }).MediaStreamTrackProcessor;
}

/** Whether audio can be captured (`MediaStreamTrackProcessor`). */
export function audioCaptureSupported(): boolean {
  return trackProcessor() !== undefined;
}

/** An even number at least 2 (encoders want even sizes). */
export function even(n: number): number {
  return Math.max(2, Math.floor(n / 2) * 2);
}

/** Read a processor's stream until stopped; returns the stop function. */
function pump<T extends { close(): void }>(track: MediaStreamTrack, Proc: Processor<T>, onValue: (v: T) => void): () => void {
  const clone = track.clone();
  const reader = new Proc({ track: clone }).readable.getReader();
  let stopped = false;
  (async () => {
    while (!stopped) {
      const { value, done } = await reader.read();
      if (done || !value) break;
      if (stopped) value.close();
      else onValue(value);
    }
  })().catch(() => {});
  return () => {
    stopped = true;
    reader.cancel().catch(() => {});
    clone.stop();
  };
}

/** Deliver a video track's frames (the callee closes each); returns a stop function. */
export function captureVideo(track: MediaStreamTrack, width: number, height: number, onFrame: (f: VideoFrame) => void): () => void {
  const Proc = trackProcessor<VideoFrame>();
  if (Proc) return pump(track, Proc, onFrame);
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = new MediaStream([track]);
  void video.play();
  const start = performance.now();
  const timer = setInterval(() => {
    if (video.readyState < 2) return;
    onFrame(new VideoFrame(video, { timestamp: Math.round((performance.now() - start) * 1000), displayWidth: width, displayHeight: height }));
  }, 33);
  return () => {
    clearInterval(timer);
    video.srcObject = null;
  };
}

/** Deliver an audio track's data (the callee closes each); needs `audioCaptureSupported()`. */
export function captureAudio(track: MediaStreamTrack, onData: (d: AudioData) => void): () => void {
  const Proc = trackProcessor<AudioData>();
  if (!Proc) throw new Error("audio capture needs MediaStreamTrackProcessor");
  return pump(track, Proc, onData);
}
