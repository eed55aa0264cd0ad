//! What operators see and steer: the admin endpoints ([`admin`]), Prometheus metrics ([`metrics`]),
//! logging ([`logging`]), signals ([`signal`]), the systemd notifications ([`service_manager`]) and
//! `mqtls reload`'s side of the admin endpoint ([`reload_command`]).

pub(crate) mod admin;
pub(crate) mod health;
pub mod logging;
pub mod metrics;
pub mod reload_command;
pub(crate) mod service_manager;
pub mod signal;
