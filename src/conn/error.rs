//! Why a connection ended before, or instead of, being spliced.

use std::time::Duration;

use crate::conn::proxy_protocol::InboundError;
use crate::conn::upstream::UpstreamError;
use crate::mqtt::connect::{ConnectError, ProtocolVersion};
use crate::x509::identity::IdentityError;
use crate::x509::rules::Refused;

/// Why a connection ended before or instead of being spliced. Variants double as bounded outcome labels.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("PROXY protocol: {0}")]
    ProxyProtocol(InboundError),
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
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
}

impl ConnError {
    /// Bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ConnError::ProxyProtocol(_) => "proxy_protocol",
            ConnError::HandshakeTimeout(_) => "tls_timeout",
            ConnError::Handshake(_) => "tls_failed",
            ConnError::ConnectTimeout(_) => "connect_timeout",
            ConnError::ClosedBeforeConnect | ConnError::ConnectIo(_) => "connect_eof",
            ConnError::BadConnect(_) | ConnError::OverBudget { .. } => "connect_refused",
            ConnError::Identity(_)
            | ConnError::UsernameMismatch { .. }
            | ConnError::NotAllowed(_)
            | ConnError::ClientIdRejected { .. } => "not_authorized",
            ConnError::Upstream(_)
            | ConnError::UpstreamWrite(_)
            | ConnError::NoConnack(_)
            | ConnError::UpstreamClosed => "upstream_failed",
            ConnError::ClientWrite(_) => "client_gone",
        }
    }
}
