/**
 * The Switchboard demo: sign in with a name, chat in a room with a presence list, call
 * someone (it rings on all their tabs), a 1:1 video call over WebRTC signaled through
 * Switchboard with relayed media as the fallback, meetings of many through the relay (the
 * room's meeting, or a call with several callees), and call history.
 *
 * URL parameters: `name` and `room` sign in at once; `nodes` (comma-separated HTTP
 * origins, default this page's) lists the nodes to use, in order; `transport`
 * (`auto`, `webtransport`, `websocket`); `relay=1` forces relayed media; `iceRelay=1` makes
 * WebRTC use TURN relay candidates only (`iceTransportPolicy: "relay"`); `meeting=1` joins
 * the room's meeting after signing in; `fps` sets the camera rate meetings ask for (30).
 */
import { CallState, Meeting, SwitchboardClient, type CallEvent, type Participant } from "../src/index";
import { ActiveCall, type MediaPath } from "./call";
import { MeetingView } from "./meeting-view";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const nodes = (params.get("nodes") ?? location.origin).split(",").map((s) => s.trim()).filter(Boolean);
const decoder = new TextDecoder();

interface Session {
  client: SwitchboardClient;
  user: string;
  name: string;
  room: string;
}

let session: Session | undefined;
/** Lobby participants, by session id. */
const people = new Map<string, Participant>();
/**
 * Presence events since the last `Joined` snapshot (a participant, or undefined for a leave):
 * the snapshot is handed over after the events read with it, so it is corrected by them.
 */
const presenceSince = new Map<string, Participant | undefined>();
let forgetPresence: ReturnType<typeof setTimeout> | undefined;
/** The events matter only until a snapshot read with them is applied, in the same task. */
function notePresence(session: string, p: Participant | undefined): void {
  presenceSince.set(session, p);
  forgetPresence ??= setTimeout(() => {
    forgetPresence = undefined;
    presenceSince.clear();
  }, 0);
}
/** The call ringing here (incoming) or placed from here (outgoing). */
let ringing: { call: string; from: string; name: string } | undefined;
let outgoing: { call: string; to: string } | undefined;
let active: ActiveCall | undefined;
/** The meeting shown, and the group call it belongs to (if it is one). */
let meeting: { view: MeetingView; call?: string } | undefined;
/** Users ticked for a group call. */
const picked = new Set<string>();
const chatLog: { from: string; text: string; offset: string }[] = [];
let tokenRefreshes = 0;

/** For tests and curious developers. */
const demo = {
  get client() {
    return session?.client;
  },
  get call() {
    return active;
  },
  /** The meeting's library object (`stats()`, `participants()`), if one is open. */
  get meeting() {
    return meeting?.view.meeting;
  },
  chatLog,
  people,
  get tokenRefreshes() {
    return tokenRefreshes;
  },
  async p2pStats() {
    return active ? active.p2pStats() : { connectionState: "none", framesDecoded: 0 };
  },
  /** The client's media counters by lane (`client.mediaStats()`), as shown in `#media-stats`. */
  mediaStats() {
    return session?.client.mediaStats();
  },
  /** Relayed media counters: video (`framesDecoded`…) and audio (`audioFramesDecoded`…). */
  relayStats() {
    if (!active?.relay) return undefined;
    return { ...active.relay.stats, ...active.relayAudio?.stats, audioRelayed: active.relayAudio?.sending ?? false };
  },
};
(globalThis as unknown as { demo: typeof demo }).demo = demo;

// -------------------------------------------------------------------------------------
// Sign in
// -------------------------------------------------------------------------------------

async function fetchToken(name: string): Promise<{ token: string; user: string; name: string }> {
  let last = "no node answered";
  // Any node mints (they share the secret): try them in turn, so a refresh works while
  // the node that served this page is down.
  for (const origin of [location.origin, ...nodes]) {
    try {
      const res = await fetch(`${origin}/api/dev/token`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        // `ttl` (seconds, at least 10) is for trying token refresh; the default is an hour.
        body: JSON.stringify(params.get("ttl") ? { name, ttl: Number(params.get("ttl")) } : { name }),
      });
      if (res.ok) return (await res.json()) as { token: string; user: string; name: string };
      const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
      last = body.error?.message ?? `HTTP ${res.status}`;
      if (res.status === 404 || res.status === 400) break;
    } catch (e) {
      last = String(e);
    }
  }
  throw new Error(last);
}

/**
 * Relayed media by lane, refreshed twice a second: on WebTransport with media lanes, frames
 * go on datagrams and streams; otherwise on the control stream (or WebSocket). The element
 * carries the counters as JSON in `data-stats` for tests.
 */
function showMediaStats(client: SwitchboardClient): void {
  const el = $("media-stats");
  let shown = "";
  setInterval(() => {
    const s = client.mediaStats();
    const json = JSON.stringify(s);
    if (json === shown) return;
    shown = json;
    el.dataset.stats = json;
    el.dataset.lanes = String(s.lanes);
    const lanes = s.lanes ? "media lanes: on" : "media lanes: off";
    const total = s.inDatagrams + s.inStreams + s.inControl + s.outDatagrams + s.outStreams + s.outControl;
    el.textContent = total === 0 && !s.lanes ? "" : `${lanes} · in: ${s.inDatagrams} datagrams, ${s.inStreams} on streams, ${s.inControl} on the control stream · out: ${s.outDatagrams} datagrams, ${s.outStreams} on streams, ${s.outControl} on the control stream · dropped: ${s.staleDropped} stale, ${s.sendDropped} unsent`;
  }, 500);
}

async function signIn(name: string, room: string, transport: string): Promise<void> {
  $("signin-error").textContent = "";
  const first = await fetchToken(name);
  const client = new SwitchboardClient({
    nodes,
    transport: transport as "auto",
    token: async () => (await fetchToken(name)).token,
  });
  session = { client, user: first.user, name: first.name, room };
  wire(client);
  showMediaStats(client);
  await client.connect();
  await client.join(room);
  $("signin").hidden = true;
  $("main").hidden = false;
  $("room-title").textContent = `#${room}`;
  $("me").hidden = false;
  $("me").textContent = `${first.name} (${first.user})`;
  document.title = `${first.name} · Switchboard`;
  // The people list comes from the `joined` event (the snapshot and what followed it).
  void refreshHistory();
  if (params.get("meeting") === "1") await openMeeting(`${room}-meeting`, `#${room} meeting`);
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $<HTMLInputElement>("name").value.trim();
  const room = $<HTMLInputElement>("room").value.trim();
  signIn(name, room, $<HTMLSelectElement>("transport-pref").value).catch((e: unknown) => {
    $("signin-error").textContent = e instanceof Error ? e.message : String(e);
  });
});

// -------------------------------------------------------------------------------------
// Connection, chat and presence
// -------------------------------------------------------------------------------------

function wire(client: SwitchboardClient): void {
  client.on("state", (s) => {
    const badge = $("conn-state");
    badge.textContent = s.status + (s.attempt ? ` (try ${s.attempt + 1})` : "");
    badge.className = `badge ${s.status === "connected" ? "ok" : s.status === "closed" ? "bad" : "warn"}`;
    if (s.transport) $("transport").textContent = s.transport === "webtransport" ? "WT" : "WS";
    $("transport").dataset.transport = s.transport ?? "";
    if (s.node) $("node").textContent = s.node;
    if (s.status === "closed" && s.error) system(`disconnected: ${s.error}`);
    if (s.status !== "connected") presenceSince.clear(); // the rejoin's snapshot is newer
  });
  client.on("joined", (j) => {
    if (j.room !== session?.room) return;
    if (j.resumed) system(`reconnected to ${client.state.node}; ${j.joined.replayed} missed message(s) recovered`);
    setPeople(j.joined.participants);
  });
  client.on("gap", (g) => system(`some messages in #${g.room} are no longer in history`));
  client.on("message", (m) => {
    if (m.room !== session?.room || m.kind !== "chat") return;
    addMessage(m.from?.name || m.from?.user || "?", decoder.decode(m.payload), m.offset.toString(), false);
  });
  client.on("participantJoined", (p) => {
    if (p.room === session?.room && p.participant) {
      notePresence(p.participant.session, p.participant);
      people.set(p.participant.session, p.participant);
      renderPeople();
    }
  });
  client.on("participantLeft", (p) => {
    if (p.room === session?.room && p.participant) {
      notePresence(p.participant.session, undefined);
      people.delete(p.participant.session);
      renderPeople();
    }
  });
  client.on("call", (ev) => void onCallEvent(ev));
  client.on("error", (e) => console.warn("switchboard:", e.message));
  client.on("tokenRefreshed", (t) => {
    tokenRefreshes++;
    console.info(`token refreshed, now valid until ${new Date(t.expiresAt * 1000).toISOString()}`);
  });
}

function system(text: string): void {
  const li = document.createElement("li");
  li.className = "system";
  li.textContent = text;
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

function addMessage(from: string, text: string, offset: string, own: boolean): void {
  chatLog.push({ from, text, offset });
  const li = document.createElement("li");
  li.className = own ? "msg own" : "msg";
  li.dataset.offset = offset;
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = from;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(who, body);
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
}

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $<HTMLInputElement>("chat-input");
  const text = input.value.trim();
  if (!text || !session) return;
  input.value = "";
  const s = session;
  s.client.publish(s.room, text, { kind: "chat" }).then(
    (offset) => addMessage(s.name, text, offset.toString(), true),
    (e: unknown) => system(`not sent: ${e instanceof Error ? e.message : e}`),
  );
});

function setPeople(list: Participant[]): void {
  people.clear();
  for (const p of list) people.set(p.session, p);
  for (const [s, p] of presenceSince) {
    if (p) people.set(s, p);
    else people.delete(s);
  }
  presenceSince.clear();
  renderPeople();
}

function renderPeople(): void {
  const byUser = new Map<string, Participant[]>();
  for (const p of people.values()) byUser.set(p.user, [...(byUser.get(p.user) ?? []), p]);
  const ul = $("people");
  ul.replaceChildren();
  for (const [user, sessions] of byUser) {
    const li = document.createElement("li");
    li.dataset.user = user;
    const label = document.createElement("span");
    label.textContent = sessions[0].name || user;
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = ` ${sessions.length > 1 ? `${sessions.length} tabs` : sessions[0].node}`;
    label.append(where);
    li.append(label);
    if (user !== session?.user) {
      const pick = document.createElement("input");
      pick.type = "checkbox";
      pick.className = "pick";
      pick.title = "include in a group call";
      pick.checked = picked.has(user);
      pick.onchange = () => {
        if (pick.checked) picked.add(user);
        else picked.delete(user);
        renderGroupCall();
      };
      label.prepend(pick);
      const btn = document.createElement("button");
      btn.className = "small call-btn";
      btn.textContent = "Call";
      btn.onclick = () => void placeCall(user, sessions[0].name || user);
      li.append(btn);
    } else {
      label.append(" (you)");
    }
    ul.append(li);
  }
  $("people-count").textContent = `(${byUser.size})`;
  for (const u of [...picked]) if (!byUser.has(u)) picked.delete(u);
  renderGroupCall();
}

function renderGroupCall(): void {
  const btn = $<HTMLButtonElement>("group-call");
  btn.textContent = `Group call (${picked.size})`;
  btn.disabled = picked.size < 2;
}

// -------------------------------------------------------------------------------------
// Calls
// -------------------------------------------------------------------------------------

function callInfo(text: string): void {
  $("call-info").textContent = text;
}

async function placeCall(user: string, name: string, more: string[] = []): Promise<void> {
  if (!session || active || outgoing || meeting) return;
  try {
    const call = await session.client.invite([user, ...more], "video");
    outgoing = { call, to: user };
    $("outgoing-to").textContent = more.length ? [name, ...more].join(", ") : name;
    $("outgoing").hidden = false;
  } catch (e) {
    callInfo(`call failed: ${e instanceof Error ? e.message : e}`);
  }
}

async function onCallEvent(ev: CallEvent): Promise<void> {
  const s = session;
  const call = ev.call;
  if (!s || !call) return;
  const me = s.client.welcome?.sessionId;
  // A call with several callees is a meeting in the call's room.
  const group = call.parties.length > 2;
  switch (ev.state) {
    case CallState.RINGING:
      if (call.caller !== s.user && !active && !meeting && ev.by?.user !== s.user) {
        ringing = { call: call.id, from: call.caller, name: ev.by?.name || call.caller };
        $("incoming-from").textContent = ringing.name;
        $("incoming").hidden = false;
      }
      break;
    case CallState.ACCEPTED:
      if (ev.answeredElsewhere && ringing?.call === call.id) {
        stopRinging();
        callInfo("answered on another device");
      } else if (ev.by?.session === me && ringing?.call === call.id) {
        stopRinging();
        if (group) await openMeeting(call.room, `call with ${call.parties.map((p) => p.user).join(", ")}`, call.id);
        else await startCall(call, call.caller, false);
      } else if (outgoing?.call === call.id) {
        const peer = ev.by?.user ?? "";
        outgoing = undefined;
        $("outgoing").hidden = true;
        if (group) await openMeeting(call.room, `call with ${call.parties.map((p) => p.user).join(", ")}`, call.id);
        else await startCall(call, peer, true);
      }
      break;
    case CallState.REJECTED:
      if (outgoing?.call === call.id) callInfo(`${ev.by?.name || ev.by?.user} declined`);
      break;
    case CallState.ENDED:
    case CallState.MISSED:
      if (ringing?.call === call.id) stopRinging();
      if (outgoing?.call === call.id) {
        outgoing = undefined;
        $("outgoing").hidden = true;
      }
      if (active?.call.id === call.id) endActive();
      if (meeting?.call === call.id) void closeMeeting();
      callInfo(`call ended (${outcomeName(call.outcome)})`);
      void refreshHistory();
      break;
  }
}

function stopRinging(): void {
  ringing = undefined;
  $("incoming").hidden = true;
}

async function startCall(call: NonNullable<CallEvent["call"]>, peer: string, isCaller: boolean): Promise<void> {
  if (!session) return;
  const force = $<HTMLInputElement>("force-relay").checked || params.get("relay") === "1";
  active = new ActiveCall(session.client, call, peer, isCaller, force, {
    remoteVideo: $<HTMLVideoElement>("remote-video"),
    remoteCanvas: $<HTMLCanvasElement>("remote-canvas"),
    localVideo: $<HTMLVideoElement>("local-video"),
    onPath: (path: MediaPath, detail: string) => {
      const badge = $("media-path");
      badge.hidden = false;
      badge.textContent = path === "p2p" ? "P2P" : path === "relayed" ? "relayed" : "connecting";
      badge.dataset.path = path;
      badge.className = `badge ${path === "p2p" ? "ok" : "warn"}`;
      $("call-status").textContent = detail;
    },
  }, params.get("iceRelay") === "1");
  $("in-call").hidden = false;
  $("call-status").textContent = `in a call with ${peer}: connecting…`;
  callInfo("");
  try {
    await active.start();
  } catch (e) {
    callInfo(`media failed: ${e instanceof Error ? e.message : e}`);
  }
}

function endActive(): void {
  active?.stop();
  active = undefined;
  $("in-call").hidden = true;
  $("media-path").hidden = true;
  $("mute").textContent = "Mute";
  $("camera").textContent = "Camera off";
}

$("accept").onclick = () => {
  if (ringing && session) session.client.answer(ringing.call, true).catch((e: unknown) => callInfo(String(e)));
};
$("reject").onclick = () => {
  if (ringing && session) session.client.answer(ringing.call, false).catch(() => {});
  stopRinging();
};
$("cancel").onclick = () => {
  if (outgoing && session) session.client.cancel(outgoing.call).catch(() => {});
};
$("hangup").onclick = () => {
  if (active && session) session.client.end(active.call.id).catch(() => endActive());
};
$("mute").onclick = () => {
  if (!active) return;
  active.setMuted(!active.muted);
  $("mute").textContent = active.muted ? "Unmute" : "Mute";
};
$("camera").onclick = () => {
  if (!active) return;
  active.setCameraOff(!active.cameraOff);
  $("camera").textContent = active.cameraOff ? "Camera on" : "Camera off";
};
$("force-relay").onchange = () => {
  if (active && $<HTMLInputElement>("force-relay").checked) void active.switchToRelay("switched by the user", true);
};

// -------------------------------------------------------------------------------------
// Meetings
// -------------------------------------------------------------------------------------

async function openMeeting(room: string, title: string, call?: string): Promise<void> {
  if (!session || meeting || active) return;
  if (!Meeting.supported()) {
    callInfo("meetings need WebCodecs, which this browser lacks");
    return;
  }
  const s = session;
  const fps = Number(params.get("fps")) || 30;
  const view = new MeetingView(new Meeting(s.client, room), title, () => {
    // Leaving a group call as its last participant ends it; otherwise the others go on.
    if (call && view.meeting.participants().length === 0) s.client.end(call).catch(() => {});
    void closeMeeting();
  }, Math.min(60, Math.max(1, fps)));
  meeting = { view, call };
  try {
    await view.open();
  } catch (e) {
    callInfo(`meeting failed: ${e instanceof Error ? e.message : e}`);
    await closeMeeting();
  }
}

async function closeMeeting(): Promise<void> {
  const m = meeting;
  meeting = undefined;
  await m?.view.close();
}

$("meeting-open").onclick = () => {
  if (session) void openMeeting(`${session.room}-meeting`, `#${session.room} meeting`);
};
$("group-call").onclick = () => {
  const [first, ...more] = [...picked];
  if (first) void placeCall(first, people.get([...people.keys()].find((k) => people.get(k)?.user === first) ?? "")?.name || first, more);
};

// -------------------------------------------------------------------------------------
// Call history
// -------------------------------------------------------------------------------------

function outcomeName(o: number): string {
  return ["", "completed", "missed", "rejected", "cancelled", "offline"][o] ?? String(o);
}

async function refreshHistory(): Promise<void> {
  if (!session) return;
  try {
    // The history API is same-origin: ask the node that served the page, else the one
    // connected (when the page's node is down and they share an origin policy).
    const s = session;
    const calls = await s.client.callHistory(20, location.origin).catch(() => s.client.callHistory(20));
    const ul = $("history");
    ul.replaceChildren(
      ...calls.map((c) => {
        const li = document.createElement("li");
        const others = c.parties.map((p) => p.user).filter((u) => u !== session?.user);
        const when = new Date(c.started_at_ms).toLocaleTimeString();
        const secs = Math.round(c.duration_ms / 1000);
        li.textContent = `${when} ${c.caller === session?.user ? "→" : "←"} ${others.join(", ")} · ${c.outcome}${secs ? ` · ${secs}s` : ""}`;
        return li;
      }),
    );
    if (calls.length === 0) ul.innerHTML = "<li>no calls yet</li>";
  } catch (e) {
    console.warn("call history:", e);
  }
}
$("history-refresh").onclick = () => void refreshHistory();

// -------------------------------------------------------------------------------------
// Start
// -------------------------------------------------------------------------------------

const transportParam = params.get("transport");
if (transportParam) $<HTMLSelectElement>("transport-pref").value = transportParam;
if (params.get("relay") === "1") $<HTMLInputElement>("force-relay").checked = true;
if (params.get("room")) $<HTMLInputElement>("room").value = params.get("room")!;
if (params.get("name")) {
  $<HTMLInputElement>("name").value = params.get("name")!;
  signIn(params.get("name")!, $<HTMLInputElement>("room").value, $<HTMLSelectElement>("transport-pref").value).catch(
    (e: unknown) => ($("signin-error").textContent = e instanceof Error ? e.message : String(e)),
  );
}
