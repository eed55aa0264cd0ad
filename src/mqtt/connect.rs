//! Reading and editing the client's first packet, the MQTT CONNECT.
//!
//! mqtls only needs to find a handful of fields (client id, username, password) and rewrite
//! them, so the reader records byte offsets into the caller's buffer instead of decoding
//! into owned structures, and the editor copies every byte it does not have to change. That keeps
//! the proxy transparent: the broker sees exactly what the client sent, apart from the username,
//! the password, the client id when asked, and the remaining-length varint.
//!
//! The reader is incremental in the simplest possible way: call [`read_connect`] again with the
//! longer buffer whenever more bytes arrive. It refuses as early as the bytes allow (first byte,
//! oversized length, protocol name, flags), so a non-MQTT peer or a hostile length is turned away
//! without buffering its body.
//!
//! Everything here is pure and panic-free on arbitrary input: all indexing goes through `get`
//! and all offset arithmetic is checked.
//!
//! The CONNACK a refused CONNECT gets ([`ConnectError::connack`]) is in [`super::connack`].

use std::fmt;

// Moved to connack.rs; `connect::connack` and `connect::Refusal` still name them.
pub use super::connack::{connack, Refusal};
// The editor lives in edit.rs; `connect::edit` and `connect::Edit` still name it.
pub use super::edit::{edit, Edit};

/// Default cap on the remaining length of a CONNECT that mqtls will buffer.
///
/// A CONNECT is normally well under 1 KiB; 256 KiB leaves room for large v5 properties and will
/// payloads while bounding the memory a not-yet-authenticated peer can make us hold.
pub const DEFAULT_MAX_CONNECT_LEN: usize = 256 * 1024;

/// Largest value a 4-byte MQTT variable byte integer can carry (the protocol's packet size limit).
pub const MAX_REMAINING_LEN: usize = 268_435_455;

pub(super) const FLAG_USERNAME: u8 = 0x80;
pub(super) const FLAG_PASSWORD: u8 = 0x40;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_WILL_QOS: u8 = 0x18;
const FLAG_WILL: u8 = 0x04;
const FLAG_RESERVED: u8 = 0x01;

/// The MQTT protocol versions mqtls understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1 (protocol name `MQIsdp`, level 3).
    V31,
    /// MQTT 3.1.1 (protocol name `MQTT`, level 4).
    V311,
    /// MQTT 5.0 (protocol name `MQTT`, level 5).
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte sent in CONNECT.
    #[must_use]
    pub fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// Short human/metrics form: "3.1", "3.1.1" or "5.0".
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V31 => "3.1",
            Self::V311 => "3.1.1",
            Self::V5 => "5.0",
        }
    }

    /// The protocol name that goes with this level.
    fn name(self) -> &'static [u8] {
        match self {
            Self::V31 => b"MQIsdp",
            Self::V311 | Self::V5 => b"MQTT",
        }
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MQTT {}", self.as_str())
    }
}

/// Half-open byte range `[start, end)` into the buffer given to [`read_connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
}

impl Span {
    pub(super) fn of(self, buf: &[u8]) -> Option<&[u8]> {
        buf.get(self.start..self.end)
    }

    /// The content of a length-prefixed field (the span minus its 2-byte prefix).
    fn content(self) -> Span {
        Span { start: self.start.saturating_add(2).min(self.end), end: self.end }
    }
}

/// A CONNECT found at the start of a buffer, recorded as byte offsets into that buffer (nothing
/// copied).
///
/// The accessors that take `buf` expect the same buffer (or one starting with the same
/// `packet_len()` bytes) that was given to [`read_connect`]; with any other buffer they return
/// empty/`None` rather than panicking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub(super) version: ProtocolVersion,
    /// Fixed header + remaining length.
    pub(super) packet_len: usize,
    /// Offset of the protocol name, i.e. just after the fixed header.
    pub(super) body_start: usize,
    /// Offset of the connect flags byte.
    pub(super) flags_at: usize,
    /// The connect flags as received.
    pub(super) flags: u8,
    /// Client id content (without length prefix).
    pub(super) client_id: Span,
    /// Where the username field is, or would be inserted: right after the will (or client id).
    pub(super) creds_at: usize,
    /// Whole username field including its length prefix.
    pub(super) username: Option<Span>,
    /// Whole password field including its length prefix.
    pub(super) password: Option<Span>,
}

impl Connect {
    /// The protocol version the client speaks; refusals must be rendered in it.
    #[must_use]
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Bytes of the buffer that are this CONNECT (fixed header + remaining length); bytes after it
    /// are pipelined packets that must be forwarded untouched.
    #[must_use]
    pub fn packet_len(&self) -> usize {
        self.packet_len
    }

    /// The client identifier (may be empty).
    #[must_use]
    pub fn client_id<'a>(&self, buf: &'a [u8]) -> &'a str {
        str_at(buf, self.client_id).unwrap_or("")
    }

    /// The username the client sent, if its username flag was set.
    #[must_use]
    pub fn username<'a>(&self, buf: &'a [u8]) -> Option<&'a str> {
        self.username.and_then(|s| str_at(buf, s.content()))
    }

    /// Whether the client sent a password field.
    #[must_use]
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether the client registered a will message.
    #[must_use]
    pub fn has_will(&self) -> bool {
        self.flags & FLAG_WILL != 0
    }
}

fn str_at(buf: &[u8], span: Span) -> Option<&str> {
    span.of(buf).and_then(|b| std::str::from_utf8(b).ok())
}

/// Why the first packet could not be accepted (or edited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The first byte is not 0x10: another MQTT packet type, a CONNECT with reserved header
    /// flags set, or not MQTT at all.
    #[error("first packet is not an MQTT CONNECT (first byte {first_byte:#04x}{}); is the client speaking MQTT over TLS to this port?", first_byte_hint(*.first_byte))]
    NotConnect { first_byte: u8 },
    /// A variable byte integer (remaining length) continued past its 4th byte.
    #[error("malformed CONNECT remaining length: variable byte integer longer than 4 bytes")]
    MalformedLength,
    /// The CONNECT is bigger than mqtls is configured to buffer (or, from [`edit`], bigger than
    /// MQTT can express).
    #[error("CONNECT remaining length {announced} exceeds the limit of {limit} bytes")]
    TooLarge {
        announced: usize,
        limit: usize,
        /// Known only if the protocol name and level had already arrived.
        version: Option<ProtocolVersion>,
    },
    /// Protocol name is not `MQTT` or `MQIsdp`.
    #[error("CONNECT protocol name is not \"MQTT\" or \"MQIsdp\"; the client is not speaking MQTT 3.1/3.1.1/5.0")]
    UnknownProtocol,
    /// The protocol name is fine but the level is not one mqtls supports.
    #[error("unsupported MQTT protocol level {level} (supported: 3 = 3.1, 4 = 3.1.1, 5 = 5.0)")]
    UnsupportedLevel { level: u8 },
    /// Level 3, 4 or 5, but under the protocol name of another version (3.1 is `MQIsdp` level 3;
    /// 3.1.1 and 5.0 are `MQTT` level 4 and 5).
    #[error("CONNECT protocol name {name:?} does not go with level {level} (MQIsdp is level 3 = 3.1; MQTT is level 4 = 3.1.1 or 5 = 5.0)")]
    NameLevelMismatch { name: &'static str, level: u8 },
    /// Bit 0 of the connect flags must be 0.
    #[error("malformed {version} CONNECT: reserved connect flag bit 0 is set")]
    ReservedFlag { version: ProtocolVersion },
    /// Structural error after the version is known.
    #[error("malformed {version} CONNECT: {what}")]
    Malformed { what: &'static str, version: ProtocolVersion },
    /// A v5 property id that is unknown or not allowed in this section.
    #[error("malformed {version} CONNECT: property id {id:#04x} is not allowed in the {section}")]
    BadProperty { id: u8, section: &'static str, version: ProtocolVersion },
    /// A UTF-8 string field is not valid UTF-8 or contains U+0000 (both forbidden by MQTT).
    #[error("malformed {version} CONNECT: {field} is not valid UTF-8 or contains U+0000")]
    InvalidUtf8 { field: &'static str, version: ProtocolVersion },
    /// [`edit`] was asked for something MQTT cannot encode (e.g. a username over 65535 bytes).
    #[error("cannot rewrite {version} CONNECT: {what}")]
    Unencodable { what: &'static str, version: ProtocolVersion },
    /// [`edit`] was given a buffer that does not hold the parsed CONNECT (a caller bug).
    #[error("edit was given a buffer that does not contain the parsed CONNECT")]
    BufferMismatch,
}

/// Names what a wrong first byte most likely is, to make the error actionable.
fn first_byte_hint(first_byte: u8) -> &'static str {
    match first_byte {
        0x16 => ", a TLS handshake: the client is doing TLS inside TLS",
        0x11..=0x1f => ", a CONNECT with reserved header flags set",
        b'A'..=b'Z' => ", ASCII text: HTTP or a PROXY protocol header?",
        0x20..=0xff => ", another MQTT packet type: the client did not start with CONNECT",
        _ => "",
    }
}

impl ConnectError {
    /// Bounded label for metrics.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotConnect { .. } => "not_connect",
            Self::TooLarge { .. } => "too_large",
            Self::MalformedLength | Self::ReservedFlag { .. } | Self::Malformed { .. } | Self::BadProperty { .. } => {
                "malformed"
            }
            Self::UnknownProtocol | Self::UnsupportedLevel { .. } | Self::NameLevelMismatch { .. } => "protocol",
            Self::InvalidUtf8 { .. } => "utf8",
            Self::Unencodable { .. } | Self::BufferMismatch => "edit",
        }
    }

    /// The protocol version of the refused CONNECT, when it was known.
    #[must_use]
    pub fn version(&self) -> Option<ProtocolVersion> {
        match self {
            Self::TooLarge { version, .. } => *version,
            Self::ReservedFlag { version }
            | Self::Malformed { version, .. }
            | Self::BadProperty { version, .. }
            | Self::InvalidUtf8 { version, .. }
            | Self::Unencodable { version, .. } => Some(*version),
            _ => None,
        }
    }
}

/// Internal parse outcome besides success: wait for more bytes, or give up.
enum Stop {
    Incomplete,
    Fail(ConnectError),
}

impl From<ConnectError> for Stop {
    fn from(e: ConnectError) -> Self {
        Stop::Fail(e)
    }
}

/// Outcome of decoding a variable byte integer other than a value.
enum VarStop {
    Incomplete,
    /// The integer would extend past the end of its enclosing section.
    Overrun,
    /// More than 4 bytes.
    TooLong,
}

/// Decodes a variable byte integer at `start` whose bytes must lie before `limit`.
/// Returns the value and the offset just after it.
fn decode_varint(buf: &[u8], start: usize, limit: usize) -> Result<(usize, usize), VarStop> {
    let mut value = 0usize;
    let mut at = start;
    for shift in [0u32, 7, 14, 21] {
        if at >= limit {
            return Err(VarStop::Overrun);
        }
        let Some(&b) = buf.get(at) else {
            return Err(VarStop::Incomplete);
        };
        value |= usize::from(b & 0x7f) << shift;
        at = at.checked_add(1).ok_or(VarStop::Overrun)?;
        if b & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err(VarStop::TooLong)
}

/// Appends `value` (must be <= [`MAX_REMAINING_LEN`]) as a minimal variable byte integer.
pub(super) fn encode_varint(mut value: usize, out: &mut Vec<u8>) {
    loop {
        // Masked to 7 bits, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let mut byte = (value & 0x7f) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

pub(super) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Cursor over the CONNECT body once the version is known.
///
/// Every read names a `limit` (end of the packet or of a property section): a field reaching past
/// it is malformed even if the bytes have not arrived yet, which is what lets us refuse early;
/// a field inside the limit but past the buffered bytes means "need more".
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    version: ProtocolVersion,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &'static str) -> Stop {
        Stop::Fail(ConnectError::Malformed { what, version: self.version })
    }

    fn take(&mut self, n: usize, limit: usize, what: &'static str) -> Result<Span, Stop> {
        let end = self.pos.checked_add(n).filter(|&e| e <= limit).ok_or_else(|| self.malformed(what))?;
        if end > self.buf.len() {
            return Err(Stop::Incomplete);
        }
        let span = Span { start: self.pos, end };
        self.pos = end;
        Ok(span)
    }

    fn bytes(&mut self, n: usize, limit: usize, what: &'static str) -> Result<&'a [u8], Stop> {
        let span = self.take(n, limit, what)?;
        span.of(self.buf).ok_or(Stop::Incomplete)
    }

    fn u8(&mut self, limit: usize, what: &'static str) -> Result<u8, Stop> {
        self.bytes(1, limit, what)?.first().copied().ok_or(Stop::Incomplete)
    }

    fn u16(&mut self, limit: usize, what: &'static str) -> Result<u16, Stop> {
        match *self.bytes(2, limit, what)? {
            [hi, lo] => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(Stop::Incomplete),
        }
    }

    fn varint(&mut self, limit: usize, what: &'static str) -> Result<usize, Stop> {
        match decode_varint(self.buf, self.pos, limit) {
            Ok((value, next)) => {
                self.pos = next;
                Ok(value)
            }
            Err(VarStop::Incomplete) => Err(Stop::Incomplete),
            Err(VarStop::Overrun) => Err(self.malformed(what)),
            Err(VarStop::TooLong) => Err(self.malformed("variable byte integer longer than 4 bytes")),
        }
    }

    /// A u16-length-prefixed binary field; returns the whole field span (prefix included).
    fn binary(&mut self, limit: usize, what: &'static str) -> Result<Span, Stop> {
        let start = self.pos;
        let len = self.u16(limit, what)?;
        let content = self.take(usize::from(len), limit, what)?;
        Ok(Span { start, end: content.end })
    }

    /// A u16-length-prefixed UTF-8 string; validated as MQTT requires (no U+0000).
    fn string(&mut self, limit: usize, field: &'static str, overrun: &'static str) -> Result<Span, Stop> {
        let span = self.binary(limit, overrun)?;
        let bytes = span.content().of(self.buf).ok_or(Stop::Incomplete)?;
        match std::str::from_utf8(bytes) {
            Ok(s) if !s.contains('\0') => Ok(span),
            _ => Err(Stop::Fail(ConnectError::InvalidUtf8 { field, version: self.version })),
        }
    }

    /// A v5 property section: varint length, then properties valid for `section`.
    fn properties(&mut self, packet_end: usize, section: Section) -> Result<(), Stop> {
        let len = self.varint(packet_end, section.overrun())?;
        let end =
            self.pos.checked_add(len).filter(|&e| e <= packet_end).ok_or_else(|| self.malformed(section.overrun()))?;
        while self.pos < end {
            // Property ids are varints, but every defined id fits in one byte; a byte with the
            // continuation bit can only start an unknown id.
            let id = self.u8(end, "property id runs past its property section")?;
            let kind = section.kind(id).ok_or(Stop::Fail(ConnectError::BadProperty {
                id,
                section: section.name(),
                version: self.version,
            }))?;
            let what = "property value runs past its property section";
            match kind {
                PropKind::Byte => {
                    self.take(1, end, what)?;
                }
                PropKind::U16 => {
                    self.take(2, end, what)?;
                }
                PropKind::U32 => {
                    self.take(4, end, what)?;
                }
                PropKind::Binary => {
                    self.binary(end, what)?;
                }
                PropKind::Str => {
                    self.string(end, "a string property", what)?;
                }
                PropKind::Pair => {
                    self.string(end, "a user property name", what)?;
                    self.string(end, "a user property value", what)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum PropKind {
    Byte,
    U16,
    U32,
    Str,
    Binary,
    Pair,
}

#[derive(Clone, Copy)]
enum Section {
    Connect,
    Will,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT properties",
            Self::Will => "will properties",
        }
    }

    fn overrun(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT properties run past the end of the packet",
            Self::Will => "will properties run past the end of the packet",
        }
    }

    fn kind(self, id: u8) -> Option<PropKind> {
        match (self, id) {
            (_, 0x26) => Some(PropKind::Pair),
            (Self::Connect, 0x11 | 0x27) | (Self::Will, 0x18 | 0x02) => Some(PropKind::U32),
            (Self::Connect, 0x21 | 0x22) => Some(PropKind::U16),
            (Self::Connect, 0x19 | 0x17) | (Self::Will, 0x01) => Some(PropKind::Byte),
            (Self::Connect, 0x15) | (Self::Will, 0x03 | 0x08) => Some(PropKind::Str),
            (Self::Connect, 0x16) | (Self::Will, 0x09) => Some(PropKind::Binary),
            _ => None,
        }
    }
}

/// Reads the CONNECT at the start of `buf`.
///
/// `Ok(None)` means the bytes so far are a valid beginning of a CONNECT and more are needed; call
/// again with the longer buffer. Decisions are made as early as the bytes allow: a first byte that
/// is not 0x10, a malformed remaining length, a remaining length above `max_len`, a wrong protocol
/// name (compared as its bytes arrive) or level, and bad connect flags are all refused before the
/// rest of the packet is waited for. A field whose declared length reaches past the end of the
/// packet is refused as soon as its length prefix is seen.
///
/// `max_len` caps the *remaining length* (the packet minus its 2–5 byte fixed header).
///
/// # Errors
/// Returns a [`ConnectError`] describing why the packet is not an acceptable CONNECT.
pub fn read_connect(buf: &[u8], max_len: usize) -> Result<Option<Connect>, ConnectError> {
    match parse(buf, max_len) {
        Ok(c) => Ok(Some(c)),
        Err(Stop::Incomplete) => Ok(None),
        Err(Stop::Fail(e)) => Err(e),
    }
}

/// The total length (fixed header + remaining length) the first packet announces, once its fixed
/// header has arrived. Lets a reader wait for the whole packet instead of re-walking a partial one on
/// every TLS record, which would make a trickled CONNECT cost quadratic time.
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let (remaining, body_start) = decode_varint(buf, 1, usize::MAX).ok()?;
    body_start.checked_add(remaining)
}

/// The protocol version of a CONNECT still arriving, once its name and level are in `buf`: what a
/// refusal before the whole packet is read answers in.
pub(crate) fn partial_version(buf: &[u8]) -> Option<ProtocolVersion> {
    let (_, body_start) = decode_varint(buf, 1, usize::MAX).ok()?;
    peek_version(buf, body_start)
}

fn parse(buf: &[u8], max_len: usize) -> Result<Connect, Stop> {
    let &first_byte = buf.first().ok_or(Stop::Incomplete)?;
    if first_byte != 0x10 {
        return Err(ConnectError::NotConnect { first_byte }.into());
    }
    let (remaining, body_start) = match decode_varint(buf, 1, usize::MAX) {
        Ok(v) => v,
        Err(VarStop::Incomplete) => return Err(Stop::Incomplete),
        Err(VarStop::Overrun | VarStop::TooLong) => return Err(ConnectError::MalformedLength.into()),
    };
    if remaining > max_len {
        return Err(ConnectError::TooLarge {
            announced: remaining,
            limit: max_len,
            version: peek_version(buf, body_start),
        }
        .into());
    }
    let packet_len = body_start.checked_add(remaining).ok_or(ConnectError::MalformedLength)?;

    let version = read_protocol(buf, body_start, packet_len)?;
    let mut r = Reader {
        buf,
        // Name length (2) + name + level (1).
        pos: body_start + 3 + version.name().len(),
        version,
    };

    let flags_at = r.pos;
    let flags = r.u8(packet_len, "packet ends before the connect flags")?;
    check_flags(flags, version)?;
    r.take(2, packet_len, "packet ends inside the keep alive")?;
    if version == ProtocolVersion::V5 {
        r.properties(packet_len, Section::Connect)?;
    }

    let client_id =
        r.string(packet_len, "client identifier", "client identifier runs past the end of the packet")?.content();
    if flags & FLAG_WILL != 0 {
        if version == ProtocolVersion::V5 {
            r.properties(packet_len, Section::Will)?;
        }
        r.string(packet_len, "will topic", "will topic runs past the end of the packet")?;
        r.binary(packet_len, "will payload runs past the end of the packet")?;
    }
    let creds_at = r.pos;
    let username = if flags & FLAG_USERNAME != 0 {
        Some(r.string(packet_len, "username", "username runs past the end of the packet")?)
    } else {
        None
    };
    let password = if flags & FLAG_PASSWORD != 0 {
        Some(r.binary(packet_len, "password runs past the end of the packet")?)
    } else {
        None
    };
    if r.pos != packet_len {
        return Err(r.malformed("unexpected bytes after the last CONNECT field"));
    }
    Ok(Connect { version, packet_len, body_start, flags_at, flags, client_id, creds_at, username, password })
}

/// Checks the protocol name and level, refusing as soon as the arrived bytes cannot be one of
/// the supported combinations. Returns the version; the name and level are then in `buf`.
fn read_protocol(buf: &[u8], body_start: usize, packet_len: usize) -> Result<ProtocolVersion, Stop> {
    let avail = buf.get(body_start..).unwrap_or_default();
    let packet = avail.get(..packet_len.saturating_sub(body_start)).unwrap_or(avail);
    let candidates: [&[u8]; 2] = [b"\x00\x04MQTT", b"\x00\x06MQIsdp"];
    let mut matched = None;
    for name in candidates {
        let n = packet.len().min(name.len());
        if packet.get(..n) == name.get(..n) {
            matched = Some(name);
            break;
        }
    }
    let Some(name) = matched else {
        return Err(ConnectError::UnknownProtocol.into());
    };
    if body_start.saturating_add(name.len()) >= packet_len {
        // The packet ends before (or exactly at) the level byte.
        return Err(ConnectError::UnknownProtocol.into());
    }
    let Some(&level) = packet.get(name.len()) else {
        return Err(Stop::Incomplete);
    };
    let is_mqisdp = name.len() == 8;
    version_for(is_mqisdp, level).ok_or_else(|| match (is_mqisdp, level) {
        // A known level under the other version's name: say that, not "unsupported".
        (true, 4 | 5) => ConnectError::NameLevelMismatch { name: "MQIsdp", level }.into(),
        (false, 3) => ConnectError::NameLevelMismatch { name: "MQTT", level }.into(),
        _ => ConnectError::UnsupportedLevel { level }.into(),
    })
}

fn version_for(is_mqisdp: bool, level: u8) -> Option<ProtocolVersion> {
    match (is_mqisdp, level) {
        (true, 3) => Some(ProtocolVersion::V31),
        (false, 4) => Some(ProtocolVersion::V311),
        (false, 5) => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Best-effort version of a packet being refused before its body was read, so that a v5 client
/// can still be told "packet too large".
fn peek_version(buf: &[u8], body_start: usize) -> Option<ProtocolVersion> {
    let body = buf.get(body_start..)?;
    if let Some(rest) = body.strip_prefix(b"\x00\x04MQTT") {
        return version_for(false, *rest.first()?);
    }
    let rest = body.strip_prefix(b"\x00\x06MQIsdp")?;
    version_for(true, *rest.first()?)
}

fn check_flags(flags: u8, version: ProtocolVersion) -> Result<(), ConnectError> {
    let malformed = |what| ConnectError::Malformed { what, version };
    if flags & FLAG_RESERVED != 0 {
        return Err(ConnectError::ReservedFlag { version });
    }
    if flags & FLAG_WILL == 0 {
        if flags & FLAG_WILL_QOS != 0 {
            return Err(malformed("will QoS is set without the will flag"));
        }
        if flags & FLAG_WILL_RETAIN != 0 {
            return Err(malformed("will retain is set without the will flag"));
        }
    } else if flags & FLAG_WILL_QOS == FLAG_WILL_QOS {
        return Err(malformed("will QoS 3 is invalid"));
    }
    if version != ProtocolVersion::V5 && flags & FLAG_PASSWORD != 0 && flags & FLAG_USERNAME == 0 {
        return Err(malformed("password flag is set without the username flag"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_at_length_boundaries() {
        for v in [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, MAX_REMAINING_LEN] {
            let mut out = Vec::new();
            encode_varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v));
            assert!(matches!(decode_varint(&out, 0, usize::MAX), Ok((x, n)) if x == v && n == out.len()));
        }
    }

    #[test]
    fn span_content_never_underflows() {
        let s = Span { start: 5, end: 6 };
        assert_eq!(s.content(), Span { start: 6, end: 6 });
    }
}
