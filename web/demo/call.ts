/**
 * One 1:1 call after it was accepted: both parties join the call's room, the caller sends
 * the WebRTC offer when the callee is there, SDP and ICE travel as `Signal`s through
 * Switchboard (room = call room, to_user = the peer). When the peer-to-peer path does not
 * connect in time (or fails, or relayed media is forced), both sides switch to relayed
 * media (video: `relay.ts`, audio: the library's `RelayedAudio`).
 */
import type { Call, SignalEvent, SwitchboardClient } from "../src/index";
import { RelayedVideo } from "./relay";
import { RelayedAudio } from "../src/index";

/** Time allowed for ICE to connect before falling back to relayed media. */
const P2P_TIMEOUT_MS = 12_000;

export type MediaPath = "connecting" | "p2p" | "relayed";

export interface CallViews {
  remoteVideo: HTMLVideoElement;
  remoteCanvas: HTMLCanvasElement;
  localVideo: HTMLVideoElement;
  onPath: (path: MediaPath, detail: string) => void;
}

interface SignalBody {
  type: "offer" | "answer" | "ice" | "relay";
  sdp?: string;
  candidate?: RTCIceCandidateInit;
}

export class ActiveCall {
  pc?: RTCPeerConnection;
  relay?: RelayedVideo;
  relayAudio?: RelayedAudio;
  local?: MediaStream;
  path: MediaPath = "connecting";
  muted = false;
  cameraOff = false;
  private peerPresent!: Promise<void>;
  private peerPresentResolve!: () => void;
  private readonly offs: (() => void)[] = [];
  private pendingIce: RTCIceCandidateInit[] = [];
  private p2pTimer?: ReturnType<typeof setTimeout>;
  private pathTimer?: ReturnType<typeof setInterval>;
  private pathDetail = "";
  private ended = false;

  constructor(
    private readonly client: SwitchboardClient,
    readonly call: Call,
    readonly peer: string,
    readonly isCaller: boolean,
    private readonly forceRelay: boolean,
    private readonly views: CallViews,
    private readonly iceRelayOnly = false,
  ) {
    this.peerPresent = new Promise((r) => (this.peerPresentResolve = r));
  }

  get room(): string {
    return this.call.room;
  }

  async start(): Promise<void> {
    this.local = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    this.views.localVideo.srcObject = this.local;
    this.offs.push(
      this.client.on("signal", (s) => void this.onSignal(s)),
      this.client.on("participantJoined", (p) => {
        if (p.room === this.room && p.participant?.user === this.peer) this.peerPresentResolve();
      }),
      this.client.on("joined", (j) => {
        if (j.room === this.room && j.joined.participants.some((p) => p.user === this.peer)) this.peerPresentResolve();
      }),
    );
    const joined = await this.client.join(this.room);
    if (joined.participants.some((p) => p.user === this.peer)) this.peerPresentResolve();
    if (this.forceRelay) {
      await this.switchToRelay("relayed media forced", true);
      return;
    }
    this.setupPeerConnection();
    this.p2pTimer = setTimeout(() => {
      if (this.path === "connecting") void this.switchToRelay("no peer-to-peer path in time", true);
    }, P2P_TIMEOUT_MS);
    if (this.isCaller) {
      await this.peerPresent;
      const offer = await this.pc!.createOffer();
      await this.pc!.setLocalDescription(offer);
      await this.send({ type: "offer", sdp: offer.sdp }, "offer");
    }
  }

  private setupPeerConnection(): void {
    // The node's STUN/TURN servers (TURN with short-lived credentials, renewed by the
    // client library); `iceRelay` forces TURN relay candidates only (URL `iceRelay=1`).
    const pc = new RTCPeerConnection({
      iceServers: this.client.iceServers,
      iceTransportPolicy: this.iceRelayOnly ? "relay" : "all",
    });
    this.pc = pc;
    // Renewed credentials apply to what ICE gathers from now on (restarts included).
    this.offs.push(
      this.client.on("iceServers", (set) => {
        if (this.pc === pc && pc.signalingState !== "closed") pc.setConfiguration({ ...pc.getConfiguration(), iceServers: set.iceServers });
      }),
    );
    for (const track of this.local!.getTracks()) pc.addTrack(track, this.local!);
    pc.ontrack = (ev) => {
      this.views.remoteVideo.srcObject = ev.streams[0] ?? new MediaStream([ev.track]);
    };
    pc.onicecandidate = (ev) => {
      if (ev.candidate) void this.send({ type: "ice", candidate: ev.candidate.toJSON() }, "ice").catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (this.path === "relayed") return;
      if (pc.connectionState === "connected") {
        clearTimeout(this.p2pTimer);
        this.setPath("p2p", "peer-to-peer (WebRTC)");
        // Say whether media goes through a TURN relay, and keep saying it truly: ICE may
        // switch pairs, and a peer's candidate first seen in a check (prflx) gets its type
        // once signaled.
        const label = () =>
          void this.p2pStats().then((st) => {
            if (this.path !== "p2p" || this.pc !== pc) return;
            const relayed = st.localCandidateType === "relay" || st.remoteCandidateType === "relay";
            const detail = relayed ? "WebRTC through a TURN relay" : "peer-to-peer (WebRTC)";
            if (this.pathDetail !== detail) this.setPath("p2p", detail);
          });
        label();
        clearInterval(this.pathTimer);
        this.pathTimer = setInterval(label, 1000);
      } else if (pc.connectionState === "failed") {
        void this.switchToRelay("peer-to-peer path failed", true);
      }
    };
  }

  private async send(body: SignalBody, kind: "offer" | "answer" | "ice" | "custom"): Promise<void> {
    await this.client.signal({ room: this.room, toUser: this.peer, kind, payload: JSON.stringify(body), call: this.call.id });
  }

  private async onSignal(s: SignalEvent): Promise<void> {
    if (this.ended || s.room !== this.room || s.from?.user !== this.peer) return;
    const body = JSON.parse(new TextDecoder().decode(s.payload)) as SignalBody;
    if (body.type === "relay") {
      await this.switchToRelay("the other side switched to relayed media", false);
      return;
    }
    const pc = this.pc;
    if (!pc) return;
    if (body.type === "offer" && body.sdp) {
      await pc.setRemoteDescription({ type: "offer", sdp: body.sdp });
      await this.flushIce();
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await this.send({ type: "answer", sdp: answer.sdp }, "answer");
    } else if (body.type === "answer" && body.sdp) {
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
      await this.flushIce();
    } else if (body.type === "ice" && body.candidate) {
      if (pc.remoteDescription) await pc.addIceCandidate(body.candidate).catch(() => {});
      else this.pendingIce.push(body.candidate);
    }
  }

  private async flushIce(): Promise<void> {
    const list = this.pendingIce;
    this.pendingIce = [];
    for (const c of list) await this.pc?.addIceCandidate(c).catch(() => {});
  }

  /** Relayed media from now on; `tell` the peer so it switches too. */
  async switchToRelay(reason: string, tell: boolean): Promise<void> {
    if (this.path === "relayed" || this.ended) return;
    this.path = "relayed";
    clearTimeout(this.p2pTimer);
    clearInterval(this.pathTimer);
    this.pc?.close();
    this.pc = undefined;
    this.views.remoteVideo.hidden = true;
    this.views.remoteCanvas.hidden = false;
    this.setPath("relayed", `relayed through Switchboard (${reason})`);
    if (!RelayedVideo.supported()) {
      this.setPath("relayed", "relayed media needs WebCodecs, which this browser lacks");
      return;
    }
    this.relay = new RelayedVideo(this.client, this.room, this.views.remoteCanvas);
    this.relayAudio = new RelayedAudio(this.client, this.room);
    const video = this.local?.getVideoTracks()[0];
    if (video) await this.relay.send(video, () => !this.cameraOff);
    // Audio where the browser can encode Opus with WebCodecs; else video only.
    const mic = this.local?.getAudioTracks()[0];
    const audio = mic ? await this.relayAudio.send(mic, () => !this.muted).catch(() => false) : false;
    if (this.ended) return;
    const what = audio ? "relayed (video + audio)" : "relayed (video; audio: not relayed)";
    this.setPath("relayed", `${what} through Switchboard (${reason})`);
    if (tell) {
      await this.peerPresent;
      await this.send({ type: "relay" }, "custom").catch(() => {});
    }
  }

  setMuted(muted: boolean): void {
    this.muted = muted;
    this.local?.getAudioTracks().forEach((t) => (t.enabled = !muted));
  }

  setCameraOff(off: boolean): void {
    this.cameraOff = off;
    this.local?.getVideoTracks().forEach((t) => (t.enabled = !off));
  }

  /** Release everything (the call ended). */
  stop(): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.p2pTimer);
    clearInterval(this.pathTimer);
    this.offs.forEach((off) => off());
    this.relay?.stop();
    this.relayAudio?.stop();
    this.pc?.close();
    this.local?.getTracks().forEach((t) => t.stop());
    this.views.localVideo.srcObject = null;
    this.views.remoteVideo.srcObject = null;
    this.views.remoteVideo.hidden = false;
    this.views.remoteCanvas.hidden = true;
    this.client.leave(this.room).catch(() => {});
  }

  private setPath(path: MediaPath, detail: string): void {
    this.path = path;
    this.pathDetail = detail;
    this.views.onPath(path, detail);
  }

  /**
   * WebRTC figures for the UI and tests: connection state, remote video frames decoded, and
   * the selected candidate pair's candidate types (`host`, `srflx`, `prflx`, `relay`) and
   * addresses.
   */
  async p2pStats(): Promise<P2PStats> {
    const pc = this.pc;
    if (!pc) return { connectionState: "none", framesDecoded: 0 };
    let framesDecoded = 0;
    const stats = await pc.getStats();
    let pairId: string | undefined;
    stats.forEach((r: { type: string; kind?: string; framesDecoded?: number; selectedCandidatePairId?: string }) => {
      if (r.type === "inbound-rtp" && r.kind === "video") framesDecoded += r.framesDecoded ?? 0;
      if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
    });
    const out: P2PStats = { connectionState: pc.connectionState, framesDecoded };
    const pair = pairId ? (stats.get(pairId) as { localCandidateId?: string; remoteCandidateId?: string } | undefined) : undefined;
    type Candidate = { candidateType?: string; address?: string; port?: number; relayProtocol?: string; url?: string };
    const local = pair?.localCandidateId ? (stats.get(pair.localCandidateId) as Candidate | undefined) : undefined;
    const remote = pair?.remoteCandidateId ? (stats.get(pair.remoteCandidateId) as Candidate | undefined) : undefined;
    if (local) {
      out.localCandidateType = local.candidateType;
      out.localAddress = `${local.address}:${local.port}`;
      if (local.url) out.localUrl = local.url;
    }
    if (remote) {
      out.remoteCandidateType = remote.candidateType;
      out.remoteAddress = `${remote.address}:${remote.port}`;
    }
    return out;
  }
}

/** What `ActiveCall.p2pStats()` reports. */
export interface P2PStats {
  connectionState: string;
  framesDecoded: number;
  localCandidateType?: string;
  localAddress?: string;
  /** The ICE server a relay candidate was allocated on. */
  localUrl?: string;
  remoteCandidateType?: string;
  remoteAddress?: string;
}
