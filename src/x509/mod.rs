//! Client and server certificates:
//! - [`identity`]: certificate → MQTT username (CN, RFC 2253 subject, SANs, fingerprint);
//! - [`rules`]: the allow rules a client certificate must match;
//! - [`policy`]: what becomes of the client's username, password and client id;
//! - `client_cert`: a client's leaf certificate, parsed once per connection for the rules, the
//!   username and the PROXY header;
//! - [`cert`]: what an operator is shown of a certificate (`/certs`, metrics, `mqtls check`, the reload log);
//! - `rfc2253`: X.509 names printed byte for byte as OpenSSL's `XN_FLAG_RFC2253` prints them;
//! - `oid`: attribute type OIDs as OpenSSL names them (dotted digits, short names);
//! - `hex`: the one hex encoder.

pub mod cert;
pub(crate) mod client_cert;
pub(crate) mod hex;
pub mod identity;
pub(crate) mod oid;
pub(crate) mod policy;
pub(crate) mod rfc2253;
pub mod rules;

pub(crate) use client_cert::ClientCert;
