//! The CONNACKs mqtls sends itself: refusing a client in its own protocol version, before (or
//! instead of) contacting the broker.

use super::connect::{ConnectError, ProtocolVersion};

/// Why mqtls refuses a client; rendered as a CONNACK in the client's protocol version by
/// [`connack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedProtocolVersion,
    IdentifierRejected,
    ServerUnavailable,
    BadUsernameOrPassword,
    NotAuthorized,
    Malformed,
    PacketTooLarge,
    /// mqtls itself is short of a resource (the CONNECT budget); try again later.
    ServerBusy,
    /// The client holds too many connections already (`max_conn_per_identity`).
    QuotaExceeded,
}

/// The CONNACK refusing a client, or `None` when the protocol has no way to say it.
///
/// 3.1/3.1.1: `[0x20, 0x02, 0x00, rc]` (4 bytes) with rc 1..=5; `Malformed` and
/// `PacketTooLarge` have no 3.x return code, so the caller just closes the connection.
/// 5.0: `[0x20, 0x03, 0x00, reason, 0x00]` (5 bytes, empty properties).
/// Returned as a `Vec` because the two versions differ in length.
#[must_use]
pub fn connack(version: ProtocolVersion, refusal: Refusal) -> Option<Vec<u8>> {
    match version {
        ProtocolVersion::V31 | ProtocolVersion::V311 => {
            let rc = match refusal {
                Refusal::UnsupportedProtocolVersion => 1,
                Refusal::IdentifierRejected => 2,
                Refusal::ServerUnavailable | Refusal::ServerBusy | Refusal::QuotaExceeded => 3,
                Refusal::BadUsernameOrPassword => 4,
                Refusal::NotAuthorized => 5,
                Refusal::Malformed | Refusal::PacketTooLarge => return None,
            };
            Some(vec![0x20, 0x02, 0x00, rc])
        }
        ProtocolVersion::V5 => {
            let reason = match refusal {
                Refusal::UnsupportedProtocolVersion => 0x84,
                Refusal::IdentifierRejected => 0x85,
                Refusal::ServerUnavailable => 0x88,
                Refusal::ServerBusy => 0x89,
                Refusal::BadUsernameOrPassword => 0x86,
                Refusal::NotAuthorized => 0x87,
                Refusal::Malformed => 0x81,
                Refusal::PacketTooLarge => 0x95,
                Refusal::QuotaExceeded => 0x97,
            };
            Some(vec![0x20, 0x03, 0x00, reason, 0x00])
        }
    }
}

impl ConnectError {
    /// The CONNACK to send before closing, if the version is known and MQTT allows one.
    ///
    /// An unsupported level gets the 3.1.1-style "unacceptable protocol version" (the client's
    /// real format is unknown, and that is what MQTT 3.1.1 and 5.0 servers are told to send).
    /// Malformed / too-large packets get 0x81 / 0x95 in 5.0 and nothing in 3.x, which has no
    /// code for them. Edit failures are our side's problem: "server unavailable".
    #[must_use]
    pub fn connack(&self) -> Option<Vec<u8>> {
        match self {
            Self::NotConnect { .. } | Self::MalformedLength | Self::UnknownProtocol | Self::BufferMismatch => None,
            Self::UnsupportedLevel { .. } | Self::NameLevelMismatch { .. } => Some(vec![0x20, 0x02, 0x00, 0x01]),
            Self::TooLarge { version, .. } => version.and_then(|v| connack(v, Refusal::PacketTooLarge)),
            Self::ReservedFlag { version }
            | Self::Malformed { version, .. }
            | Self::BadProperty { version, .. }
            | Self::InvalidUtf8 { version, .. } => connack(*version, Refusal::Malformed),
            Self::Unencodable { version, .. } => connack(*version, Refusal::ServerUnavailable),
        }
    }
}
