/**
 * Where a node is: its HTTP origin, WebSocket URL and (if it runs one) WebTransport URL
 * with the certificate hash to pin.
 */

/** A node, given explicitly. */
export interface NodeEndpoints {
  /** HTTP origin, e.g. `http://127.0.0.1:8080` (call history, discovery). */
  http?: string;
  /** WebSocket URL, e.g. `ws://127.0.0.1:8080/ws`. */
  websocket?: string;
  /** WebTransport URL, e.g. `https://127.0.0.1:4433/wt`. */
  webtransport?: string;
  /** Hex SHA-256 of the WebTransport certificate (self-signed: `serverCertificateHashes`). */
  certificateSha256?: string;
}

/**
 * A node as the application names it: an HTTP origin (`http://host:8080`, discovered
 * through `GET /api/endpoints` and `GET /certificate.sha256`), a WebSocket URL
 * (`ws://host:8080/ws`: WebSocket only) or explicit endpoints.
 */
export type NodeAddress = string | NodeEndpoints;

interface EndpointsDoc {
  node?: string;
  websocket?: { path?: string };
  webtransport?: { port: number; path: string } | null;
}

async function fetchWithTimeout(url: string, timeoutMs: number, init: RequestInit = {}): Promise<Response> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    return await fetch(url, { ...init, signal: ctl.signal, cache: "no-store" });
  } finally {
    clearTimeout(timer);
  }
}

/** Resolve a node address to concrete endpoints (network calls for HTTP origins). */
export async function resolveNode(address: NodeAddress, timeoutMs: number): Promise<NodeEndpoints> {
  if (typeof address !== "string") return address;
  const url = new URL(address);
  if (url.protocol === "ws:" || url.protocol === "wss:") {
    const http = `${url.protocol === "wss:" ? "https:" : "http:"}//${url.host}`;
    return { http, websocket: url.toString() };
  }
  const origin = url.origin;
  const wsScheme = url.protocol === "https:" ? "wss:" : "ws:";
  const resolved: NodeEndpoints = { http: origin, websocket: `${wsScheme}//${url.host}/ws` };
  try {
    const res = await fetchWithTimeout(`${origin}/api/endpoints`, timeoutMs);
    if (res.ok) {
      const doc = (await res.json()) as EndpointsDoc;
      if (doc.websocket?.path) resolved.websocket = `${wsScheme}//${url.host}${doc.websocket.path}`;
      if (doc.webtransport) {
        resolved.webtransport = `https://${url.hostname.includes(":") ? `[${url.hostname}]` : url.hostname}:${doc.webtransport.port}${doc.webtransport.path}`;
      }
    }
  } catch {
    // An older node or a proxy without the document: WebSocket only.
  }
  if (resolved.webtransport) {
    try {
      const res = await fetchWithTimeout(`${origin}/certificate.sha256`, timeoutMs);
      // 404: the node uses a configured (CA-signed) certificate; nothing to pin.
      if (res.ok) resolved.certificateSha256 = (await res.text()).trim();
    } catch {
      delete resolved.webtransport; // cannot learn the hash: don't try a self-signed certificate
    }
  }
  return resolved;
}
