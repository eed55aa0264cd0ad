//! Client and server certificates: the identity a client certificate maps to ([`identity`]), the allow
//! rules it must match ([`rules`]), and what an operator is shown of a certificate ([`cert`]).

pub mod cert;
pub mod identity;
pub mod policy;
pub mod rules;
