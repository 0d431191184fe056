/**
 * The two transports behind one interface: WebTransport (one bidirectional stream of
 * length-prefixed frames) and WebSocket (one binary message per frame).
 */
import { encodeRecord, RecordDecoder } from "./framing.js";
import { MediaLanes, type LaneKind, type LaneSession } from "./lanes.js";

export type TransportKind = "webtransport" | "websocket";

/** Why a transport closed. `code` is the WebSocket close code or WebTransport close code. */
export interface CloseInfo {
  code: number;
  reason: string;
}

export interface Transport {
  readonly kind: TransportKind;
  readonly url: string;
  send(frame: Uint8Array): void;
  close(code?: number, reason?: string): void;
  /** Set by the client: called for each received frame. */
  onframe: (frame: Uint8Array) => void;
  /** Set by the client: called once when the transport is gone. */
  onclose: (info: CloseInfo) => void;
  /**
   * WebTransport only: start the session's media lanes (after `Welcome.media_lanes`);
   * `onframe` gets each frame received on them. They close with the transport.
   */
  openMediaLanes?(onframe: (frame: Uint8Array, lane: LaneKind) => void): MediaLanes;
}

/** The largest frame accepted from the server (the protocol's limit is 256 KiB). */
const MAX_FRAME = 1 << 20;

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout?: () => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      onTimeout?.();
      reject(new Error(`${what}: timed out after ${ms} ms`));
    }, ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

/** Open a WebSocket (`ws(s)://host/ws`). */
export function openWebSocket(url: string, timeoutMs: number): Promise<Transport> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const transport: Transport = {
    kind: "websocket",
    url,
    send: (frame) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(frame);
    },
    close: (code = 1000, reason = "") => {
      try {
        ws.close(code, reason);
      } catch {
        ws.close();
      }
    },
    onframe: () => {},
    onclose: () => {},
  };
  let closed = false;
  ws.onmessage = (ev) => {
    if (ev.data instanceof ArrayBuffer) transport.onframe(new Uint8Array(ev.data));
  };
  const opened = new Promise<Transport>((resolve, reject) => {
    ws.onopen = () => resolve(transport);
    ws.onclose = (ev) => {
      if (closed) return;
      closed = true;
      reject(new Error(`WebSocket ${url} closed (${ev.code}) before opening`));
      transport.onclose({ code: ev.code, reason: ev.reason });
    };
  });
  return withTimeout(opened, timeoutMs, `WebSocket ${url}`, () => ws.close()).then((t) => {
    ws.onclose = (ev) => {
      if (closed) return;
      closed = true;
      transport.onclose({ code: ev.code, reason: ev.reason });
    };
    return t;
  });
}

/** Whether this browser has WebTransport (it needs a secure context: https or localhost). */
export function webTransportSupported(): boolean {
  return typeof (globalThis as { WebTransport?: unknown }).WebTransport === "function";
}

/** Open a WebTransport session and its control stream. `certHash`: hex SHA-256, if any. */
export async function openWebTransport(url: string, certHash: string | undefined, timeoutMs: number): Promise<Transport> {
  const options: WebTransportOptions = {};
  if (certHash) {
    options.serverCertificateHashes = [{ algorithm: "sha-256", value: hexToBytes(certHash) }];
  }
  const wt = new WebTransport(url, options);
  // A rejected `closed` must not surface as an unhandled rejection.
  const closedInfo: Promise<CloseInfo> = wt.closed.then(
    (info) => ({ code: info.closeCode ?? 0, reason: info.reason ?? "" }),
    (err) => ({ code: (err as { streamErrorCode?: number })?.streamErrorCode ?? 0, reason: String(err) }),
  );
  const setup = (async () => {
    await wt.ready;
    const stream = await wt.createBidirectionalStream();
    return stream;
  })();
  let stream: WebTransportBidirectionalStream;
  try {
    stream = await withTimeout(setup, timeoutMs, `WebTransport ${url}`, () => wt.close());
  } catch (e) {
    try {
      wt.close();
    } catch {
      /* already closed */
    }
    throw e;
  }
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const decoder = new RecordDecoder(MAX_FRAME);
  let closed = false;
  const transport: Transport = {
    kind: "webtransport",
    url,
    send: (frame) => {
      if (closed) return;
      writer.write(encodeRecord(frame)).catch(() => finish({ code: 0, reason: "write failed" }));
    },
    close: (code = 0, reason = "") => {
      try {
        wt.close({ closeCode: code, reason });
      } catch {
        /* already closed */
      }
    },
    onframe: () => {},
    onclose: () => {},
    openMediaLanes: (onframe) => {
      lanes?.close();
      lanes = new MediaLanes(wt as unknown as LaneSession, onframe);
      if (closed) lanes.close();
      return lanes;
    },
  };
  let lanes: MediaLanes | undefined;
  const finish = (info: CloseInfo) => {
    if (closed) return;
    closed = true;
    lanes?.close();
    try {
      wt.close();
    } catch {
      /* already closed */
    }
    transport.onclose(info);
  };
  (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const record of decoder.push(value)) transport.onframe(record);
      }
    } catch {
      /* the session closed */
    }
    // Prefer the session's close info (it carries the server's close code).
    const info = await withTimeout(closedInfo, 2000, "close info").catch(() => ({ code: 0, reason: "stream ended" }));
    finish(info);
  })();
  closedInfo.then(finish);
  return transport;
}

export function hexToBytes(hex: string): Uint8Array<ArrayBuffer> {
  const clean = hex.trim();
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}
