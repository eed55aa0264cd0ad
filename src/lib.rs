//! mqtls: terminates MQTT-over-TLS, maps the client certificate onto the MQTT CONNECT's username, and
//! splices the rest of the connection to a plain-TCP broker untouched.
//!
//! The folders follow a connection's life and what surrounds it; [`app`] builds and runs them all:
//! - [`config`]: the command line and the file, merged once into validated settings;
//! - [`tls`]: the rustls server configuration built from the files on disk, and resumption that never
//!   outlives a client certificate;
//! - [`conn`]: one connection, stage by stage: accept, PROXY header, TLS handshake, CONNECT, identity,
//!   broker, splice;
//! - [`mqtt`]: the CONNECT reader/editor (where the username is rewritten) and the CONNACKs;
//! - [`x509`]: certificate → username, allow rules, certificate descriptions;
//! - [`reload`]: rotated TLS files and SIGHUP;
//! - [`crl`]: CRLs fetched over HTTP and refreshed;
//! - [`recheck`]: established connections held to trust changes, certificate expiry and a lifetime;
//! - [`ops`]: admin endpoints, metrics, logging, signals, systemd.
#![forbid(unsafe_code)]
// Nothing reachable from the network may panic: no unwrap/expect/indexing/panic outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic))]

pub mod app;
pub mod config;
pub mod conn;
pub mod crl;
pub mod duration;
pub mod mqtt;
pub mod ops;
pub mod recheck;
pub mod reload;
pub mod tls;
pub mod x509;

pub use app::App;
pub use conn::handle::Proxy;
