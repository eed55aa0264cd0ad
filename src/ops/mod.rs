//! What operators see and steer: the admin endpoints ([`admin`]), Prometheus metrics ([`metrics`]),
//! logging ([`logging`]), signals ([`signal`]) and the systemd notifications ([`service_manager`]).

pub mod admin;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod service_manager;
pub mod signal;
