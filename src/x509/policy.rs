//! How a certificate identity reaches the broker: the username, the password and the client id.

use serde::{Deserialize, Serialize};

use super::identity::UsernameFrom;

/// What to do with a username the client put in its CONNECT when the certificate supplies one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientUsername {
    /// Replace it with the certificate identity.
    #[default]
    Overwrite,
    /// Refuse the CONNECT (CONNACK "not authorized") when it differs from the identity.
    Reject,
}

/// What happens to the client's password when the username comes from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordPolicy {
    /// Remove it: the certificate is the credential, and the broker never sees a device secret.
    #[default]
    Drop,
    /// Pass it on unchanged (for brokers that check both).
    Keep,
}

/// What happens to the client identifier the client sent when it presented a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIdPolicy {
    /// Pass it on unchanged.
    #[default]
    Keep,
    /// Replace it with the mapped identity, so one device can't take over another's session.
    FromIdentity,
    /// Refuse (CONNACK "identifier rejected") a client id that does not start with the identity.
    RequirePrefix,
}

impl ClientIdPolicy {}

/// How a certificate identity reaches the broker, under the file's key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct IdentityPolicy {
    pub username_from: UsernameFrom,
    pub client_username: ClientUsername,
    pub password: PasswordPolicy,
    pub client_id: ClientIdPolicy,
}
