/**
 * ICE servers for `RTCPeerConnection` from the node: STUN URLs, and TURN URLs with
 * short-lived credentials (TURN REST API: username `<expiry>:<user>`, expiring at
 * `expiresAt`). `SwitchboardClient.iceServers` holds the current ones, renewed before they
 * expire; pass them as `new RTCPeerConnection({ iceServers: client.iceServers })`.
 */
import type { IceServers } from "./gen/switchboard_pb.js";

/** One entry of `RTCConfiguration.iceServers`. */
export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

/** The servers with their expiry (Unix seconds; 0: nothing expires). */
export interface IceServerSet {
  iceServers: IceServer[];
  expiresAt: number;
}

/** The protocol message as `RTCPeerConnection` takes it (STUN entries without credentials). */
export function toIceServerSet(m: IceServers | undefined): IceServerSet {
  if (!m) return { iceServers: [], expiresAt: 0 };
  const iceServers = m.servers.map((s): IceServer => (s.username ? { urls: [...s.urls], username: s.username, credential: s.credential } : { urls: [...s.urls] }));
  return { iceServers, expiresAt: Number(m.expiresAt) };
}

/**
 * When to renew credentials expiring at `expiresAt` (Unix seconds), in ms from `nowMs`: a
 * fifth of their remaining life before the end (at most five minutes before), at least a
 * second from now; `undefined` when nothing expires.
 */
export function iceRenewDelay(expiresAt: number, nowMs: number): number | undefined {
  if (!expiresAt) return undefined;
  const remaining = expiresAt * 1000 - nowMs;
  const margin = Math.min(5 * 60_000, remaining / 5);
  return Math.max(1000, remaining - margin);
}
