//! Prometheus metrics. Every label value comes from a fixed set (outcome, reason, direction, role) or
//! from the configuration (the listener's name or address): never an identity, a client id or a peer's
//! address, so cardinality stays bounded whatever clients send.
//!
//! Connection metrics carry `listener` and `transport`; each listener holds a [`ListenerMetrics`] with
//! its labels and the handles every connection touches resolved once, so counting costs no lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::tls::Certificates;

/// Which listener a connection came through: its name (or address when unnamed) and its transport
/// (`mqtt`, `websockets`). Bounded by the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct At {
    pub(crate) listener: Arc<str>,
    pub(crate) transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    #[prometheus(flatten)]
    pub(crate) at: At,
    pub(crate) outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    #[prometheus(flatten)]
    pub(crate) at: At,
    pub(crate) reason: &'static str,
}

/// A WebSocket close code mqtls sent for a client's bad frame (one of four).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CodeLabel {
    #[prometheus(flatten)]
    pub(crate) at: At,
    pub(crate) code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    #[prometheus(flatten)]
    pub(crate) at: At,
    pub(crate) direction: &'static str,
}

/// A listener, for the readiness gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabel {
    pub(crate) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

/// A completed TLS handshake: `full` or `resumed`, and the protocol version (`1.2`, `1.3`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabel {
    #[prometheus(flatten)]
    pub(crate) at: At,
    pub(crate) kind: &'static str,
    pub(crate) version: &'static str,
}

/// A loaded certificate: its role and position (bounded by what the operator configured) and serial.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertLabel {
    pub(crate) role: &'static str,
    pub(crate) index: u32,
    pub(crate) serial: String,
}

/// A CRL issuer (RFC 2253): bounded by the configured client CAs and CRL files.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IssuerLabel {
    pub(crate) issuer: String,
}

/// A CRL URL: bounded by `crl_urls` and the distribution point cap.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UrlLabel {
    pub(crate) url: String,
}

/// All of mqtls' metrics, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    pub(crate) active_connections: Family<At, Gauge>,
    pub(crate) connections: Family<OutcomeLabel, Counter>,
    pub(crate) handshake_failures: Family<ReasonLabel, Counter>,
    pub(crate) handshakes: Family<HandshakeLabel, Counter>,
    pub(crate) connect_refusals: Family<ReasonLabel, Counter>,
    pub(crate) websocket_refusals: Family<ReasonLabel, Counter>,
    pub(crate) websocket_upgrades: Family<At, Counter>,
    pub(crate) websocket_violations: Family<CodeLabel, Counter>,
    pub(crate) upstream_errors: Family<ReasonLabel, Counter>,
    pub(crate) handshake_duration: Family<At, Histogram>,
    pub(crate) connection_duration: Family<At, Histogram>,
    pub(crate) bytes: Family<DirectionLabel, Counter>,
    pub(crate) cert_not_after: Family<CertLabel, Gauge>,
    pub(crate) reloads: Family<ResultLabel, Counter>,
    pub(crate) proxy_protocol_errors: Family<ReasonLabel, Counter>,
    pub(crate) crl_next_update: Family<IssuerLabel, Gauge>,
    pub(crate) crl_this_update: Family<IssuerLabel, Gauge>,
    pub(crate) crl_fetches: Family<ResultLabel, Counter>,
    pub(crate) crl_last_success: Family<UrlLabel, Gauge>,
    pub(crate) connections_closed: Family<ReasonLabel, Counter>,
    pub(crate) identity_limit_refusals: Family<At, Counter>,
    pub(crate) max_connections: Gauge,
    pub(crate) upstream_ready: Family<ListenerLabel, Gauge>,
    /// The certificates in force, per source (a listener's `cert` path): with several listeners each
    /// reloader replaces only its own set, and the expiry gauges show them all.
    certificate_sets: Mutex<BTreeMap<String, Arc<Certificates>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mqtls");
        let m = Metrics {
            active_connections: Family::default(),
            connections: Family::default(),
            handshake_failures: Family::default(),
            handshakes: Family::default(),
            connect_refusals: Family::default(),
            websocket_refusals: Family::default(),
            websocket_upgrades: Family::default(),
            websocket_violations: Family::default(),
            upstream_errors: Family::default(),
            // 1 ms … ~16 s: a handshake is milliseconds unless the machine is drowning.
            handshake_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 15))),
            // 1 s … ~3 days: device sessions last from seconds to weeks.
            connection_duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 4.0, 10))),
            bytes: Family::default(),
            cert_not_after: Family::default(),
            reloads: Family::default(),
            proxy_protocol_errors: Family::default(),
            crl_next_update: Family::default(),
            crl_this_update: Family::default(),
            crl_fetches: Family::default(),
            crl_last_success: Family::default(),
            connections_closed: Family::default(),
            identity_limit_refusals: Family::default(),
            max_connections: Gauge::default(),
            upstream_ready: Family::default(),
            certificate_sets: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("active_connections", "Client connections open now", m.active_connections.clone());
        registry.register(
            "connections",
            "Client connections by how they ended (ok, tls_failed, connect_refused, not_authorized, upstream_failed, limit, ...)",
            m.connections.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "Failed TLS handshakes by reason (no_client_cert, unknown_ca, expired, revoked, timeout, protocol, ...)",
            m.handshake_failures.clone(),
        );
        registry.register(
            "connect_refusals",
            "CONNECT packets refused by reason (malformed, too_large, not_connect, not_authorized, ...)",
            m.connect_refusals.clone(),
        );
        registry.register(
            "websocket_refusals",
            "WebSocket upgrade requests refused by reason (wrong_path, not_upgrade, subprotocol, origin, timeout, ...)",
            m.websocket_refusals.clone(),
        );
        registry.register("websocket_upgrades", "WebSocket upgrades answered with 101", m.websocket_upgrades.clone());
        registry.register(
            "websocket_violations",
            "WebSocket connections closed for a client's bad frame, by close code (1002 protocol, 1003 text, 1007 UTF-8, 1009 too big)",
            m.websocket_violations.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Completed TLS handshakes by kind (full, resumed) and version (1.2, 1.3): how well resumption works",
            m.handshakes.clone(),
        );
        registry.register("upstream_connect_errors", "Failed broker connects by reason", m.upstream_errors.clone());
        registry.register_with_unit(
            "tls_handshake_duration",
            "Duration of successful TLS handshakes",
            Unit::Seconds,
            m.handshake_duration.clone(),
        );
        registry.register_with_unit(
            "connection_duration",
            "Duration of spliced connections",
            Unit::Seconds,
            m.connection_duration.clone(),
        );
        registry.register(
            "bytes",
            "Bytes spliced, by direction (client_to_upstream, upstream_to_client)",
            m.bytes.clone(),
        );
        registry.register(
            "certificate_not_after_timestamp_seconds",
            "Expiry (Unix time) of each loaded certificate, by role (server, client_ca, sni)",
            m.cert_not_after.clone(),
        );
        registry.register("tls_reloads", "TLS configuration reloads by result (ok, error)", m.reloads.clone());
        registry.register(
            "proxy_protocol_errors",
            "Connections closed over their inbound PROXY header, by reason (untrusted, missing, invalid, too_large, timeout, eof, io)",
            m.proxy_protocol_errors.clone(),
        );
        registry.register(
            "crl_next_update_timestamp_seconds",
            "nextUpdate (Unix time) of each CRL in force (files and fetched), by issuer",
            m.crl_next_update.clone(),
        );
        registry.register(
            "crl_this_update_timestamp_seconds",
            "thisUpdate (Unix time) of each CRL in force (files and fetched), by issuer",
            m.crl_this_update.clone(),
        );
        registry.register(
            "crl_fetches",
            "CRL fetches by result (ok, not_modified, http_error, timeout, too_large, unparsable, bad_signature, unknown_issuer, older)",
            m.crl_fetches.clone(),
        );
        registry.register(
            "crl_last_success_timestamp_seconds",
            "Last fetch (Unix time) of each CRL URL that returned a good CRL",
            m.crl_last_success.clone(),
        );
        registry.register(
            "connections_closed",
            "Established connections mqtls closed, by reason (revoked, untrusted, not_allowed, expired, lifetime)",
            m.connections_closed.clone(),
        );
        registry.register(
            "identity_limit_refusals",
            "Connections refused because their certificate already held max_conn_per_identity connections",
            m.identity_limit_refusals.clone(),
        );
        registry.register(
            "max_connections",
            "The process-wide connection limit (max_connections): compare mqtls_active_connections with it",
            m.max_connections.clone(),
        );
        registry.register(
            "upstream_ready",
            "1 when the listener's broker accepted the last readiness probe's connection, else 0",
            m.upstream_ready.clone(),
        );
        registry.register("build", "Build information", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        // Both reload results exist from the start, at 0, so `increase()` sees the first failure.
        for result in ["ok", "error"] {
            m.reloads.get_or_create(&ResultLabel { result });
        }
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The handle a listener's connections count through.
    pub(crate) fn listener(self: &Arc<Self>, listener: &str, transport: &'static str) -> ListenerMetrics {
        let at = At { listener: Arc::from(listener), transport };
        // One statement each: a family's guard lives to the end of its statement, and a second
        // insert into the same family within it would wait for that guard forever.
        let active = self.active_connections.get_or_create(&at).clone();
        let ok = self.connections.get_or_create(&OutcomeLabel { at: at.clone(), outcome: "ok" }).clone();
        let handshake_duration = self.handshake_duration.get_or_create(&at).clone();
        let connection_duration = self.connection_duration.get_or_create(&at).clone();
        let bytes_in =
            self.bytes.get_or_create(&DirectionLabel { at: at.clone(), direction: "client_to_upstream" }).clone();
        let bytes_out =
            self.bytes.get_or_create(&DirectionLabel { at: at.clone(), direction: "upstream_to_client" }).clone();
        ListenerMetrics {
            root: self.clone(),
            at,
            active,
            ok,
            handshake_duration,
            connection_duration,
            bytes_in,
            bytes_out,
        }
    }

    /// The gauge showing whether `listener`'s broker accepted the last readiness probe.
    pub(crate) fn upstream_ready(&self, listener: &str) -> Gauge {
        self.upstream_ready.get_or_create(&ListenerLabel { listener: listener.to_string() }).clone()
    }

    /// Replaces the certificates of `source` (one listener's) and re-derives the expiry gauges from
    /// every source's. A certificate several listeners share is one series.
    pub(crate) fn set_certificates_for(&self, source: &str, certs: &Arc<Certificates>) {
        let mut sets = self.certificate_sets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        sets.insert(source.to_string(), certs.clone());
        self.cert_not_after.clear();
        for certs in sets.values() {
            for (role, certs) in [("server", &certs.server_chain), ("client_ca", &certs.client_ca), ("sni", &certs.sni)]
            {
                for (index, cert) in certs.iter().enumerate() {
                    let label = CertLabel { role, index: index as u32, serial: cert.serial.clone() };
                    self.cert_not_after.get_or_create(&label).set(cert.not_after);
                }
            }
        }
        self.crl_next_update.clear();
        self.crl_this_update.clear();
        for crl in sets.values().flat_map(|certs| &certs.crls) {
            let label = IssuerLabel { issuer: crl.issuer.clone() };
            // Several CRLs of one issuer: the gauges show the freshest.
            let this = self.crl_this_update.get_or_create(&label);
            if crl.this_update_unix >= this.get() {
                this.set(crl.this_update_unix);
                if let Some(next) = crl.next_update_unix {
                    self.crl_next_update.get_or_create(&label).set(next);
                }
            }
        }
    }

    /// Counts a CRL fetch by result.
    pub(crate) fn crl_fetch(&self, result: &'static str) {
        self.crl_fetches.get_or_create(&ResultLabel { result }).inc();
    }

    /// Records a good fetch of `url` at `unix` time.
    pub(crate) fn crl_fetched(&self, url: &str, unix: i64) {
        self.crl_last_success.get_or_create(&UrlLabel { url: url.to_string() }).set(unix);
    }
}

/// One listener's view of the metrics: its labels, and the series every connection touches resolved
/// once (a family lookup hashes the labels under a lock; at thousands of handshakes a second that
/// shows). Rarer series (failures by reason) are looked up when they happen.
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    root: Arc<Metrics>,
    at: At,
    active: Gauge,
    ok: Counter,
    handshake_duration: Histogram,
    connection_duration: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl ListenerMetrics {
    /// The process's metrics (for what isn't per listener).
    pub(crate) fn root(&self) -> &Arc<Metrics> {
        &self.root
    }

    /// This listener's labels.
    pub(crate) fn at(&self) -> At {
        self.at.clone()
    }

    /// Counts a connection opened; the returned guard un-counts it when dropped, however the connection ends.
    pub(crate) fn opened(&self) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.active.clone())
    }

    /// Counts a completed handshake and how long it took.
    pub(crate) fn handshake(&self, conn: &rustls::ServerConnection, seconds: f64) {
        self.handshake_duration.observe(seconds);
        let kind = match conn.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => "resumed",
            _ => "full",
        };
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "other",
        };
        self.root.handshakes.get_or_create(&HandshakeLabel { at: self.at(), kind, version }).inc();
    }

    /// Counts a connection's end by outcome.
    pub(crate) fn outcome(&self, outcome: &'static str) {
        self.root.connections.get_or_create(&OutcomeLabel { at: self.at(), outcome }).inc();
    }

    /// Counts a spliced connection's end: its outcome, duration and bytes.
    pub(crate) fn spliced(&self, seconds: f64, client_to_upstream: u64, upstream_to_client: u64) {
        self.ok.inc();
        self.connection_duration.observe(seconds);
        self.bytes_in.inc_by(client_to_upstream);
        self.bytes_out.inc_by(upstream_to_client);
    }

    /// Counts `reason` in `family` (one of the root's reason families).
    pub(crate) fn reason(&self, family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { at: self.at(), reason }).inc();
    }

    /// Counts an established connection closed by mqtls (see [`crate::recheck`]).
    pub(crate) fn closed(&self, reason: &'static str) {
        self.reason(&self.root.connections_closed, reason);
    }

    /// Counts a connection refused for its certificate's connection count.
    pub(crate) fn identity_limit_refusal(&self) {
        self.root.identity_limit_refusals.get_or_create(&self.at).inc();
    }

    /// Counts a WebSocket upgrade answered with 101.
    pub(crate) fn websocket_upgrade(&self) {
        self.root.websocket_upgrades.get_or_create(&self.at).inc();
    }

    /// Counts a WebSocket connection closed with `code` for a client's bad frame.
    pub(crate) fn websocket_violation(&self, code: &'static str) {
        self.root.websocket_violations.get_or_create(&CodeLabel { at: self.at(), code }).inc();
    }
}

/// Keeps the active-connections gauge right however the connection ends (even when a drain deadline
/// drops it mid-flight).
pub(crate) struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
