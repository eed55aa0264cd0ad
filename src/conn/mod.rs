//! A connection's life, one file per stage after the TLS handshake: [`socket`] (the listening socket:
//! bound, or passed by systemd; its handover to a successor) → [`accept`] (the accept loop, the
//! process-wide caps and the drain) → [`proxy_protocol`] (a load balancer's header in, the broker's
//! header out) → [`handle`] (TLS, the CONNECT, identity, the broker, in order) → [`upstream`] (the
//! broker connection) → [`splice`] (bytes both ways). [`websocket`] serves MQTT over WebSockets
//! between the TLS handshake and the CONNECT. [`error`] says why a connection ended before the splice. [`budget`] bounds the CONNECT bytes held before the splice; [`busy_poll`] trades CPU
//! for round-trip latency after traffic; [`handshake_threads`] runs what comes before the splice at a
//! lower priority than established traffic.

use std::time::Duration;

use serde::Serialize;

pub(crate) mod accept;
pub mod admission;
pub(crate) mod budget;
pub(crate) mod busy_poll;
pub(crate) mod error;
pub(crate) mod handle;
pub(crate) mod handshake_threads;
pub mod proxy_protocol;
pub mod socket;
pub(crate) mod splice;
pub mod upstream;
pub mod websocket;

/// Largest CONNECT mqtls buffers by default: ample for long MQTT 5 property lists and will messages;
/// the total over all connections is bounded by [`DEFAULT_CONNECT_BUFFER_BUDGET`].
pub(crate) const DEFAULT_MAX_CONNECT_SIZE: usize = crate::mqtt::connect::DEFAULT_MAX_CONNECT_LEN;

/// CONNECT bytes held at once beyond each connection's free 4 KiB (see [`budget`]): 128 CONNECTs at
/// the 256 KiB cap in flight together, far more than real devices ever send at once, and with
/// `max_handshakes`' worst case (~52 MiB) well inside the Kubernetes example's 256 MiB limit.
pub(crate) const DEFAULT_CONNECT_BUFFER_BUDGET: usize = 32 * 1024 * 1024;

/// Enough for a large fleet per replica, while keeping a file-descriptor exhaustion from taking the
/// process down with it (each connection holds two descriptors).
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Handshakes in flight at once. Each holds a rustls connection (a few KiB) for up to the handshake
/// deadline; the cap bounds what a flood of silent or slow ClientHellos can pin, while staying far above
/// what a reconnect storm of real devices has in flight on one replica.
pub(crate) const DEFAULT_MAX_HANDSHAKES: usize = 4096;

/// Deadlines and caps applied to each connection, and the process-wide caps; under the file's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    #[serde(serialize_with = "crate::duration::serialize")]
    pub handshake_timeout: Duration,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub connect_timeout: Duration,
    pub max_connect_size: usize,
    /// CONNECT bytes held by all connections together beyond each one's free allowance.
    pub(crate) connect_buffer_budget: usize,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub(crate) upstream_connect_timeout: Duration,
    /// Time the broker has to send its first bytes (the CONNACK) after the forwarded CONNECT.
    #[serde(serialize_with = "crate::duration::serialize")]
    pub connack_timeout: Duration,
    /// Client connections open at once; past it new ones are closed at accept.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; past it new connections are closed at accept.
    pub(crate) max_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connect_size: DEFAULT_MAX_CONNECT_SIZE,
            connect_buffer_budget: DEFAULT_CONNECT_BUFFER_BUDGET,
            upstream_connect_timeout: Duration::from_secs(5),
            connack_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        }
    }
}
