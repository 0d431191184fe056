//! Size limits shared by servers and clients.

/// Largest encoded frame (client or server) in bytes: 256 KiB, enough for a video keyframe.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Largest frame accepted before a valid `Hello` (a token of up to [`MAX_TOKEN_LEN`] and a
/// client string): all a connection that has not authenticated can make a node buffer.
pub const MAX_HELLO_FRAME_BYTES: usize = 16 * 1024;
/// Largest room or user id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Largest `Publish.kind`, in bytes.
pub const MAX_KIND_LEN: usize = 64;
/// Largest codec name in a media frame, in bytes.
pub const MAX_CODEC_LEN: usize = 32;
/// Largest token accepted in `Hello`/`RefreshToken`, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Most participants listed in a `Joined` frame (about 200 bytes each, well under
/// [`MAX_FRAME_BYTES`]).
pub const MAX_JOINED_PARTICIPANTS: usize = 500;
/// Simulcast layers a sender may send (`Media.layer` 0 ..= 2: e.g. 180p, 360p, 720p).
pub const MAX_LAYERS: u32 = 3;
/// Largest `Media.audio_level` (-dBov; 127 is silence, RFC 6464).
pub const MAX_AUDIO_LEVEL: u32 = 127;
