//! Why a connection ended before, or instead of, being spliced, and the one place ([`ConnError::reason`])
//! that names it for both the metrics and the log line.

use std::time::Duration;

use tracing::{debug, warn};

use crate::conn::admission::Limited;
use crate::conn::proxy_protocol::InboundError;
use crate::conn::upstream::UpstreamError;
use crate::conn::websocket::UpgradeError;
use crate::mqtt::connect::{ConnectError, ProtocolVersion};
use crate::ops::metrics::ListenerMetrics;
use crate::tls;
use crate::x509::identity::IdentityError;
use crate::x509::rules::Refused;

/// Why a connection ended before or instead of being spliced; [`ConnError::reason`] names it in the
/// metrics and the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("PROXY protocol: {0}")]
    ProxyProtocol(InboundError),
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    #[error("{0}")]
    WebSocket(UpgradeError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("client closed before sending a complete CONNECT")]
    ClosedBeforeConnect,
    #[error("reading CONNECT: {0}")]
    ConnectIo(std::io::Error),
    #[error("refused CONNECT: {0}")]
    BadConnect(#[from] ConnectError),
    #[error("certificate identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("CONNECT username {sent:?} differs from certificate identity {identity:?} (client_username = reject)")]
    UsernameMismatch { sent: String, identity: String },
    #[error("{0}")]
    NotAllowed(#[from] Refused),
    #[error("CONNECT client id {client_id:?} does not start with the certificate identity {identity:?} (client_id = require-prefix)")]
    ClientIdRejected { client_id: String, identity: String },
    #[error(
        "CONNECT refused after {held} bytes: the CONNECTs being read hold all of connect_buffer_budget \
         (a flood of large CONNECTs?)"
    )]
    OverBudget { held: usize, version: Option<ProtocolVersion> },
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("forwarding CONNECT to broker: {0}")]
    UpstreamWrite(std::io::Error),
    #[error("broker did not answer the CONNECT within {0:?}")]
    NoConnack(Duration),
    #[error("broker closed the connection without answering the CONNECT")]
    UpstreamClosed,
    #[error("writing to the client: {0}")]
    ClientWrite(std::io::Error),
    #[error("source refused by {}", .0.as_str())]
    RateLimited(Limited),
    #[error("certificate of {identity:?} already holds {max} connections (max_conn_per_identity): a cloned or leaked certificate?")]
    IdentityLimit { identity: String, max: u32 },
}

/// Where a failure is counted besides `mqtls_connections_total{outcome}`: one counter family, under
/// its `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// `mqtls_proxy_protocol_errors_total{reason}`.
    ProxyProtocolErrors,
    /// `mqtls_tls_handshake_failures_total{reason}`.
    HandshakeFailures,
    /// `mqtls_websocket_refusals_total{reason}`.
    WebSocketRefusals,
    /// `mqtls_connect_refusals_total{reason}`.
    ConnectRefusals,
    /// `mqtls_upstream_connect_errors_total{reason}`.
    UpstreamErrors,
    /// Counted under its outcome only (the reason is empty).
    OutcomeOnly,
}

/// How a failed connection is counted and logged: the metric labels and the `refused` log line's
/// fields are these values, so the two always agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reason {
    /// `mqtls_connections_total{outcome}`, and the log line's `outcome`.
    pub(crate) outcome: &'static str,
    /// The counter it is also counted under.
    pub(crate) family: Family,
    /// The family's `reason` label, and the log line's `reason`.
    pub(crate) reason: &'static str,
}

impl Reason {
    /// Closed before a PROXY header or a ClientHello arrived: a TCP health check or port probe,
    /// logged at debug level rather than as a warning.
    pub(crate) fn closed_before_tls(&self) -> bool {
        self.reason == "eof" && matches!(self.family, Family::ProxyProtocolErrors | Family::HandshakeFailures)
    }

    /// Closed after TLS without a WebSocket request: a browser's spare connection (browsers open
    /// connections ahead of need and close those they don't use), logged at debug level too.
    pub(crate) fn closed_before_upgrade(&self) -> bool {
        self.reason == "eof" && self.family == Family::WebSocketRefusals
    }
}

/// The target the log line has always had, which operators' filters (`RUST_LOG`, `log_level`) name.
const LOG_TARGET: &str = "mqtls::conn::handle";

impl ConnError {
    /// The outcome, the counter family and the reason label this failure is counted and logged under
    /// (the label values are documented in docs/operations.md).
    pub(crate) fn reason(&self) -> Reason {
        let (outcome, family, reason) = match self {
            ConnError::ProxyProtocol(e) => ("proxy_protocol", Family::ProxyProtocolErrors, e.label()),
            ConnError::HandshakeTimeout(_) => ("tls_timeout", Family::HandshakeFailures, "timeout"),
            ConnError::Handshake(e) => ("tls_failed", Family::HandshakeFailures, tls::handshake_failure_label(e)),
            ConnError::WebSocket(e) => ("websocket_refused", Family::WebSocketRefusals, e.label()),
            ConnError::ConnectTimeout(_) => ("connect_timeout", Family::ConnectRefusals, "timeout"),
            ConnError::ClosedBeforeConnect | ConnError::ConnectIo(_) => ("connect_eof", Family::ConnectRefusals, "eof"),
            ConnError::BadConnect(e) => ("connect_refused", Family::ConnectRefusals, e.label()),
            ConnError::OverBudget { .. } => ("connect_refused", Family::ConnectRefusals, "memory_budget"),
            // One label for every way a certificate can lack a usable identity; the error says which.
            ConnError::Identity(_) => ("not_authorized", Family::ConnectRefusals, "no_identity"),
            ConnError::UsernameMismatch { .. } => ("not_authorized", Family::ConnectRefusals, "username_mismatch"),
            ConnError::NotAllowed(e) => ("not_authorized", Family::ConnectRefusals, e.label()),
            ConnError::ClientIdRejected { .. } => ("not_authorized", Family::ConnectRefusals, "client_id_rejected"),
            ConnError::Upstream(e) => ("upstream_failed", Family::UpstreamErrors, e.label()),
            ConnError::UpstreamWrite(_) => ("upstream_failed", Family::UpstreamErrors, "io"),
            ConnError::NoConnack(_) => ("upstream_failed", Family::UpstreamErrors, "no_connack"),
            ConnError::UpstreamClosed => ("upstream_failed", Family::UpstreamErrors, "closed"),
            // The client left while its CONNACK was on the way: the outcome says it all.
            ConnError::ClientWrite(_) => ("client_gone", Family::OutcomeOnly, ""),
            ConnError::RateLimited(_) => ("rate_limited", Family::OutcomeOnly, ""),
            ConnError::IdentityLimit { .. } => ("identity_limit", Family::OutcomeOnly, ""),
        };
        Reason { outcome, family, reason }
    }

    /// Counts a connection that ended before it was spliced: under its outcome, and under its
    /// family's reason.
    pub(crate) fn count(&self, m: &ListenerMetrics) {
        let Reason { outcome, family, reason } = self.reason();
        m.outcome(outcome);
        if let ConnError::IdentityLimit { .. } = self {
            m.identity_limit_refusal();
        }
        let root = m.root();
        let family = match family {
            Family::ProxyProtocolErrors => &root.proxy_protocol_errors,
            Family::HandshakeFailures => &root.handshake_failures,
            Family::WebSocketRefusals => &root.websocket_refusals,
            Family::ConnectRefusals => &root.connect_refusals,
            Family::UpstreamErrors => &root.upstream_errors,
            Family::OutcomeOnly => return,
        };
        m.reason(family, reason);
    }

    /// Logs the connection's end: one `refused` warning with the outcome, the reason and the error,
    /// or, closed before TLS, one debug line.
    pub(crate) fn log(&self) {
        if let ConnError::RateLimited(_) = self {
            // Logged by the admission at most once a second.
            return;
        }
        let why = self.reason();
        let Reason { outcome, reason, .. } = why;
        if why.closed_before_tls() {
            debug!(target: LOG_TARGET, outcome, reason, "closed before TLS");
        } else if why.closed_before_upgrade() {
            debug!(target: LOG_TARGET, outcome, reason, "closed before the WebSocket upgrade");
        } else {
            warn!(target: LOG_TARGET, outcome, reason, err = %self, "refused");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::io::{Error as IoError, ErrorKind};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Every variant (some twice, where the inner error decides the reason or the log level) with the
    /// outcome, family and reason it must be counted and logged under.
    fn table() -> Vec<(ConnError, Reason)> {
        let r = |outcome, family, reason| Reason { outcome, family, reason };
        let io = |kind| IoError::from(kind);
        let no_cert = IoError::new(ErrorKind::InvalidData, rustls::Error::NoCertificatesPresented);
        let ms = Duration::from_millis(1);
        let (sent, identity) = (String::from("a"), String::from("b"));
        use Family::*;
        vec![
            (ConnError::ProxyProtocol(InboundError::Eof), r("proxy_protocol", ProxyProtocolErrors, "eof")),
            (ConnError::ProxyProtocol(InboundError::Missing), r("proxy_protocol", ProxyProtocolErrors, "missing")),
            (ConnError::HandshakeTimeout(ms), r("tls_timeout", HandshakeFailures, "timeout")),
            (ConnError::Handshake(io(ErrorKind::UnexpectedEof)), r("tls_failed", HandshakeFailures, "eof")),
            (ConnError::Handshake(no_cert), r("tls_failed", HandshakeFailures, "no_client_cert")),
            (
                ConnError::WebSocket(UpgradeError::Refused {
                    refusal: crate::conn::websocket::upgrade::Refusal::WrongPath,
                    detail: String::new(),
                }),
                r("websocket_refused", WebSocketRefusals, "wrong_path"),
            ),
            (ConnError::WebSocket(UpgradeError::Timeout), r("websocket_refused", WebSocketRefusals, "timeout")),
            (ConnError::WebSocket(UpgradeError::Closed), r("websocket_refused", WebSocketRefusals, "eof")),
            (ConnError::ConnectTimeout(ms), r("connect_timeout", ConnectRefusals, "timeout")),
            (ConnError::ClosedBeforeConnect, r("connect_eof", ConnectRefusals, "eof")),
            (ConnError::ConnectIo(io(ErrorKind::UnexpectedEof)), r("connect_eof", ConnectRefusals, "eof")),
            (
                ConnError::BadConnect(ConnectError::NotConnect { first_byte: 0x30 }),
                r("connect_refused", ConnectRefusals, "not_connect"),
            ),
            (
                ConnError::OverBudget { held: 4096, version: None },
                r("connect_refused", ConnectRefusals, "memory_budget"),
            ),
            (
                ConnError::Identity(IdentityError::Missing { field: "subject CN" }),
                r("not_authorized", ConnectRefusals, "no_identity"),
            ),
            (
                ConnError::UsernameMismatch { sent: sent.clone(), identity: identity.clone() },
                r("not_authorized", ConnectRefusals, "username_mismatch"),
            ),
            (
                ConnError::NotAllowed(Refused::NotAllowed { subject: sent.clone(), issuer: identity.clone() }),
                r("not_authorized", ConnectRefusals, "not_allowed"),
            ),
            (
                ConnError::ClientIdRejected { client_id: sent, identity },
                r("not_authorized", ConnectRefusals, "client_id_rejected"),
            ),
            (
                ConnError::Upstream(UpstreamError::Timeout { addr: "broker:1883".into(), after: ms }),
                r("upstream_failed", UpstreamErrors, "timeout"),
            ),
            (
                ConnError::Upstream(UpstreamError::Connect {
                    addr: "broker:1883".into(),
                    source: io(ErrorKind::ConnectionRefused),
                }),
                r("upstream_failed", UpstreamErrors, "refused"),
            ),
            (ConnError::UpstreamWrite(io(ErrorKind::BrokenPipe)), r("upstream_failed", UpstreamErrors, "io")),
            (ConnError::NoConnack(ms), r("upstream_failed", UpstreamErrors, "no_connack")),
            (ConnError::UpstreamClosed, r("upstream_failed", UpstreamErrors, "closed")),
            (ConnError::ClientWrite(io(ErrorKind::BrokenPipe)), r("client_gone", OutcomeOnly, "")),
            (ConnError::RateLimited(Limited::SourceRate), r("rate_limited", OutcomeOnly, "")),
            (ConnError::IdentityLimit { identity: "d".into(), max: 1 }, r("identity_limit", OutcomeOnly, "")),
        ]
    }

    /// No wildcard: a new variant fails to compile here, and then fails the test until the table has it.
    fn variant(err: &ConnError) -> usize {
        match err {
            ConnError::ProxyProtocol(_) => 0,
            ConnError::HandshakeTimeout(_) => 1,
            ConnError::Handshake(_) => 2,
            ConnError::ConnectTimeout(_) => 3,
            ConnError::ClosedBeforeConnect => 4,
            ConnError::ConnectIo(_) => 5,
            ConnError::BadConnect(_) => 6,
            ConnError::Identity(_) => 7,
            ConnError::UsernameMismatch { .. } => 8,
            ConnError::NotAllowed(_) => 9,
            ConnError::ClientIdRejected { .. } => 10,
            ConnError::OverBudget { .. } => 11,
            ConnError::Upstream(_) => 12,
            ConnError::UpstreamWrite(_) => 13,
            ConnError::NoConnack(_) => 14,
            ConnError::UpstreamClosed => 15,
            ConnError::ClientWrite(_) => 16,
            ConnError::WebSocket(_) => 17,
            ConnError::RateLimited(_) => 18,
            ConnError::IdentityLimit { .. } => 19,
        }
    }
    const VARIANTS: usize = 20;

    #[test]
    fn the_table_has_every_variant() {
        let covered: BTreeSet<usize> = table().iter().map(|(err, _)| variant(err)).collect();
        assert_eq!(covered, (0..VARIANTS).collect());
    }

    #[test]
    fn each_failure_has_the_reason_the_table_gives_it() {
        for (err, expected) in table() {
            assert_eq!(err.reason(), expected, "{err:?}");
        }
    }

    /// A `Write` the test's log lines go to.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// The one line logged since the last call, parsed.
        fn take_line(&self) -> serde_json::Value {
            let bytes = std::mem::take(&mut *self.0.lock().expect("lock"));
            let text = String::from_utf8(bytes).expect("utf8");
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 1, "one log line, got {text}");
            serde_json::from_str(lines[0]).expect("json")
        }
    }

    /// The `(metric, label value)` of every counter sample of 1 in `render`'s output.
    fn counted(render: &str) -> Vec<(String, String)> {
        render
            .lines()
            .filter_map(|l| l.strip_suffix("\"} 1"))
            .filter_map(|l| l.split_once("{"))
            // The family's own label is the last, after `listener` and `transport`.
            .map(|(metric, labels)| (metric.to_string(), labels.rsplit_once("=\"").expect("label").1.to_string()))
            .filter(|(metric, _)| metric != "mqtls_build_info")
            .collect()
    }

    fn metric_name(family: Family) -> Option<&'static str> {
        match family {
            Family::ProxyProtocolErrors => Some("mqtls_proxy_protocol_errors_total"),
            Family::HandshakeFailures => Some("mqtls_tls_handshake_failures_total"),
            Family::WebSocketRefusals => Some("mqtls_websocket_refusals_total"),
            Family::ConnectRefusals => Some("mqtls_connect_refusals_total"),
            Family::UpstreamErrors => Some("mqtls_upstream_connect_errors_total"),
            Family::OutcomeOnly => None,
        }
    }

    /// What the metrics count and what the log line says, for every failure: the log's `outcome` and
    /// `reason` are the labels the metrics counted it under, in the family the table names.
    #[test]
    fn each_failure_is_logged_with_the_labels_it_is_counted_under() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for (err, expected) in table() {
                let metrics = std::sync::Arc::new(crate::ops::metrics::Metrics::new());
                err.count(&metrics.listener("test", "mqtt"));
                let mut samples = counted(&metrics.render());
                let outcome = ("mqtls_connections_total".to_string(), expected.outcome.to_string());
                assert!(samples.contains(&outcome), "{err:?}: {samples:?}");
                samples.retain(|s| *s != outcome);
                // Also counted on its own, unlabelled counter.
                samples.retain(|s| s.0 != "mqtls_identity_limit_refusals_total");
                let family: Vec<(String, String)> = metric_name(expected.family)
                    .map(|m| (m.to_string(), expected.reason.to_string()))
                    .into_iter()
                    .collect();
                assert_eq!(samples, family, "{err:?}");

                err.log();
                if let ConnError::RateLimited(_) = err {
                    // The admission logs these, at most once a second.
                    assert!(captured.0.lock().expect("lock").is_empty(), "{err:?} logged per connection");
                    continue;
                }
                let line = captured.take_line();
                assert_eq!(line["outcome"], expected.outcome, "{err:?}: {line}");
                assert_eq!(line["reason"], expected.reason, "{err:?}: {line}");
                assert_eq!(line["target"], "mqtls::conn::handle", "{line}");
                // Closed before TLS (no PROXY header, no ClientHello) is a probe: debug, not a warning.
                // So is a browser's spare connection, closed after TLS without a WebSocket request.
                let before_tls = expected.reason == "eof"
                    && matches!(expected.family, Family::ProxyProtocolErrors | Family::HandshakeFailures);
                let before_upgrade = expected.reason == "eof" && expected.family == Family::WebSocketRefusals;
                let quiet = before_tls || before_upgrade;
                let (level, message) = match (before_tls, before_upgrade) {
                    (true, _) => ("DEBUG", "closed before TLS"),
                    (_, true) => ("DEBUG", "closed before the WebSocket upgrade"),
                    _ => ("WARN", "refused"),
                };
                assert_eq!((line["level"].as_str(), line["message"].as_str()), (Some(level), Some(message)), "{err:?}");
                if !quiet {
                    assert_eq!(line["err"], err.to_string(), "{line}");
                }
            }
        });
    }

    /// Every outcome and reason label is one docs/operations.md lists for its metric.
    #[test]
    fn every_label_is_documented() {
        let docs = include_str!("../../docs/operations.md");
        let row = |metric: &str| {
            let start = format!("| `{metric}` |");
            docs.lines().find(|l| l.starts_with(&start)).unwrap_or_else(|| panic!("no row for {metric}")).to_string()
        };
        for (err, Reason { outcome, family, reason }) in table() {
            assert!(row("mqtls_connections_total").contains(&format!("`{outcome}`")), "{err:?}: {outcome}");
            if let Some(metric) = metric_name(family) {
                assert!(row(metric).contains(&format!("`{reason}`")), "{err:?}: {metric} {reason}");
            }
        }
    }
}
