/**
 * The demo's meeting screen: a grid of tiles (everyone else's relayed video on a canvas, this
 * side's camera in a video element), names with microphone and camera state, the active
 * speaker outlined, and mute / camera / leave controls. The library's `Meeting` does the
 * media and the layer choices; this file only draws it. Each tile's data attributes
 * (`data-session`, `data-layer`, `data-requested`) say what is shown, for tests.
 */
import { Meeting, type MeetingParticipant } from "../src/index";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

export class MeetingView {
  private readonly tiles = new Map<string, HTMLElement>();
  private readonly local: HTMLElement;
  private stream?: MediaStream;
  private readonly onResize = () => this.layout();

  constructor(
    readonly meeting: Meeting,
    private readonly title: string,
    private readonly onLeave: () => void,
    /** Camera frames per second asked for (the encoders follow the camera). */
    private readonly frameRate = 30,
  ) {
    const grid = $("meeting-grid");
    grid.replaceChildren();
    this.local = tile("you", "");
    this.local.classList.add("local");
    const video = document.createElement("video");
    video.autoplay = true;
    video.muted = true;
    video.playsInline = true;
    this.local.prepend(video);
    grid.append(this.local);
    meeting.on("participantJoined", (p) => this.add(p));
    meeting.on("participantLeft", (p) => this.remove(p.session));
    meeting.on("participantChanged", (p) => this.update(p));
    meeting.on("activeSpeaker", (s) => {
      for (const [session, el] of this.tiles) el.classList.toggle("speaking", session === s.session);
      this.local.classList.toggle("speaking", s.session === "");
    });
    addEventListener("resize", this.onResize);
  }

  /** Show the screen, get the camera and microphone (if allowed) and join. */
  async open(): Promise<void> {
    $("meeting-title").textContent = this.title;
    $("meeting").hidden = false;
    $("meeting-mute").textContent = "Mute";
    $("meeting-camera").textContent = "Camera off";
    $("meeting-mute").onclick = () => {
      this.meeting.setMuted(!this.meeting.isMuted);
      $("meeting-mute").textContent = this.meeting.isMuted ? "Unmute" : "Mute";
      this.local.classList.toggle("muted", this.meeting.isMuted);
    };
    $("meeting-camera").onclick = () => {
      this.meeting.setCameraOff(!this.meeting.isCameraOff);
      $("meeting-camera").textContent = this.meeting.isCameraOff ? "Camera on" : "Camera off";
      this.local.classList.toggle("camera-off", this.meeting.isCameraOff);
    };
    $("meeting-leave").onclick = () => this.onLeave();
    this.stream = await navigator.mediaDevices
      .getUserMedia({ video: { width: 640, height: 360, frameRate: this.frameRate }, audio: true })
      .catch((e: unknown) => {
        $("meeting-status").textContent = `no camera or microphone (${e instanceof Error ? e.message : e}): watching only`;
        return undefined;
      });
    const video = this.local.querySelector("video")!;
    if (this.stream) video.srcObject = this.stream;
    await this.meeting.join(this.stream);
    this.layout();
  }

  /** Leave the meeting and hide the screen. */
  async close(): Promise<void> {
    removeEventListener("resize", this.onResize);
    await this.meeting.leave();
    this.stream?.getTracks().forEach((t) => t.stop());
    $("meeting").hidden = true;
    $("meeting-grid").replaceChildren();
    $("meeting-status").textContent = "";
  }

  private add(p: MeetingParticipant): void {
    if (this.tiles.has(p.session)) return;
    const el = tile(p.name || p.user, p.session);
    const canvas = document.createElement("canvas");
    el.prepend(canvas);
    $("meeting-grid").append(el);
    this.tiles.set(p.session, el);
    this.layout();
    this.meeting.attach(p.session, canvas);
    this.update(p);
  }

  private remove(session: string): void {
    this.tiles.get(session)?.remove();
    this.tiles.delete(session);
    this.layout();
  }

  private update(p: MeetingParticipant): void {
    const el = this.tiles.get(p.session);
    if (!el) return;
    el.classList.toggle("muted", !p.audio);
    el.classList.toggle("camera-off", !p.video);
    el.dataset.requested = String(p.requestedLayer);
    el.dataset.layer = p.receivedLayer === undefined ? "" : String(p.receivedLayer);
    const label = el.querySelector(".label")!;
    label.textContent = `${p.name || p.user}${p.audio ? "" : " 🔇"}${p.receivedLayer === undefined ? "" : ` · L${p.receivedLayer}`}`;
  }

  /** Columns for the number of tiles, so tiles stay as large as the screen allows. */
  private layout(): void {
    const n = this.tiles.size + 1;
    const cols = n <= 1 ? 1 : n <= 4 ? 2 : n <= 9 ? 3 : 4;
    const grid = $("meeting-grid");
    grid.style.gridTemplateColumns = `repeat(${cols}, 1fr)`;
    grid.style.gridTemplateRows = `repeat(${Math.ceil(n / cols)}, 1fr)`;
    $("meeting-status").textContent = `${n} in the meeting`;
    this.meeting.relayout();
  }
}

function tile(name: string, session: string): HTMLElement {
  const el = document.createElement("div");
  el.className = "tile";
  if (session) el.dataset.session = session;
  const label = document.createElement("span");
  label.className = "label";
  label.textContent = name;
  el.append(label);
  return el;
}
