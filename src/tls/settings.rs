//! What the TLS configuration is built from: the files and the client-certificate policy.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether and how clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// A certificate signed by the client CA is required for the handshake to succeed.
    #[default]
    Required,
    /// Clients may present a certificate (which must then verify) or none (CONNECT passed on unmodified).
    Optional,
    /// No certificate is asked for; CONNECTs pass unmodified.
    None,
}

impl ClientAuth {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
            ClientAuth::None => "none",
        }
    }
}

/// TLS material and client-certificate policy of one listener; read from disk when the server
/// configuration is built. Serialized under the file's key names (`mqtls check`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    #[serde(rename = "crl")]
    pub crls: Vec<PathBuf>,
    /// Refuse an expired or not-yet-valid server certificate instead of loading it with a warning.
    /// A process-wide setting, copied here because the build checks it; printed once, at the top level.
    #[serde(skip)]
    pub refuse_expired: bool,
    /// ALPN protocols the server accepts, in preference order; empty = no ALPN.
    pub alpn: Vec<String>,
    /// Certificates picked by SNI name; `cert`/`key` serve clients sending no or another name.
    pub sni: Vec<SniCert>,
    /// DER OCSP response stapled with `cert` (not with the SNI entries' certificates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocsp_staple: Option<PathBuf>,
    /// Session-ticket keys shared with other replicas; none = keys of this process alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_keys: Option<PathBuf>,
    /// CRLs fetched over HTTP, and what a stale CRL does (`crl_stale` applies to CRL files too).
    #[serde(flatten)]
    pub crl_fetch: crate::crl::CrlSettings,
}

/// A certificate and key served to clients that ask for one of `names` (SNI).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Lower-case DNS names; `*.example.org` matches exactly one label in front of `example.org`.
    pub(crate) names: Vec<String>,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}
