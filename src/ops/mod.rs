//! What operators see and steer: the admin endpoints ([`admin`]), Prometheus metrics ([`metrics`]),
//! logging ([`logging`]), signals ([`signal`]) and the systemd notifications ([`service_manager`]).

pub(crate) mod admin;
pub(crate) mod health;
pub mod logging;
pub mod metrics;
pub(crate) mod service_manager;
pub mod signal;
