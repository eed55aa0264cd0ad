//! A connection's life, one file per stage after the TLS handshake: [`accept`] (the accept loop, the
//! process-wide caps and the drain) → [`proxy_protocol`] (a load balancer's header in, the broker's
//! header out) → [`handle`] (TLS, the CONNECT, identity, the broker, in order) → [`upstream`] (the
//! broker connection) → [`splice`] (bytes both ways). [`error`] says why a connection ended before
//! the splice. [`budget`] bounds the CONNECT bytes held before the splice; [`busy_poll`] trades CPU
//! for round-trip latency after traffic.

pub mod accept;
pub mod budget;
pub mod busy_poll;
pub mod error;
pub mod handle;
pub mod proxy_protocol;
pub mod splice;
pub mod upstream;
