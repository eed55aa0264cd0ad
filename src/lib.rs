//! mqtls: terminates MQTT-over-TLS, maps the client certificate onto the MQTT CONNECT's username, and
//! splices the rest of the connection to a plain-TCP broker untouched.
//!
//! A connection's life, one module per stage:
//! [`tls`] handshake → [`connect`] read and edit the first packet → [`identity`] certificate → username →
//! [`upstream`] broker connect → [`splice`] bytes both ways. [`proxy`] runs those stages for one
//! connection, [`server`] accepts and drains, [`reload`] swaps in rotated TLS files, [`config`] and [`signal`]
//! sit at the edges.
#![forbid(unsafe_code)]

pub mod config;
pub mod connect;
pub mod identity;
pub mod logging;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod signal;
pub mod splice;
pub mod tls;
pub mod upstream;

pub use proxy::Proxy;
pub use server::serve;
