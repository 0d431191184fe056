/**
 * Switchboard browser client.
 *
 * ```ts
 * import { SwitchboardClient } from "@switchboard/client";
 * const client = new SwitchboardClient({ nodes: ["http://127.0.0.1:8080"], token });
 * client.on("message", (m) => console.log(m.from?.name, new TextDecoder().decode(m.payload)));
 * await client.connect();
 * await client.join("demo");
 * await client.publish("demo", "hello", { kind: "chat" });
 * ```
 */
export * from "./client.js";
export { backoffDelay, reconnectDelay, MAX_RETRY_HINT_MS, type BackoffOptions } from "./backoff.js";
export { CallTracker, MAX_TRACKED_CALLS, MAX_RESUME_CALLS } from "./calls-resume.js";
export { resolveNode, type NodeAddress, type NodeEndpoints } from "./endpoints.js";
export { encodeRecord, RecordDecoder } from "./framing.js";
export { MediaLanes, MAX_LANE_RECORD, MAX_INCOMING_STREAMS, MAX_OUTGOING_GROUPS, MAX_GROUP_BACKLOG, MAX_TOTAL_BACKLOG, type LaneFrame, type LaneKind, type LaneSession } from "./lanes.js";
export { toIceServerSet, iceRenewDelay, type IceServer, type IceServerSet } from "./ice.js";
export { Meeting, MEETING_STATE_KIND, WINDOW_MS, MAX_VIDEO_PARTICIPANTS, type MeetingOptions, type MeetingParticipant, type MeetingEvents, type MeetingStats } from "./meeting/meeting.js";
export { LayerChoice, layerForTile, isBadWindow, badWindowReason, HOLD_OFF_MS, MAX_HOLD_OFF_MS, type DeliveryWindow, type LayerSize } from "./meeting/layer-choice.js";
export { SimulcastSender, DEFAULT_LAYERS, MEETING_VIDEO_TRACK, type VideoLayer, type VideoSendStats } from "./meeting/video-send.js";
export { RemoteVideo, type RemoteVideoStats } from "./meeting/video-receive.js";
export { RelayedAudio, AUDIO_TRACK, audioLevel, levelFromRms, type RelayAudioStats } from "./media/audio.js";
export { captureVideo, captureAudio, audioCaptureSupported } from "./media/capture.js";
export { MediaOrder, type OrderedFrame } from "./media-order.js";
export { webTransportSupported, type TransportKind } from "./transport.js";
export * from "./gen/switchboard_pb.js";
