//! The broker side: where it is, and connecting to it with a deadline.
//!
//! Host names are resolved at every connect, not at start-up, so a Kubernetes Service name or a DNS
//! change is followed without a restart.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

/// Where the plain-MQTT broker listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `host:port`; the host may be a name, resolved at connect time.
    Tcp { host: String, port: u16 },
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream::Tcp { host: "127.0.0.1".into(), port: 1883 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpstreamAddrError {
    #[error("{0:?} is neither host:port nor unix:/path")]
    Form(String),
    #[error("{0:?}: the port must be a number from 1 to 65535")]
    Port(String),
    #[error("unix: needs a socket path, as in unix:/run/mosquitto/mqtt.sock")]
    EmptyPath,
}

impl FromStr for Upstream {
    type Err = UpstreamAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(UpstreamAddrError::EmptyPath);
            }
            return Ok(Upstream::Unix(PathBuf::from(path)));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| UpstreamAddrError::Form(s.into()))?;
        // Bracketed IPv6, as in [::1]:1883.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(UpstreamAddrError::Form(s.into()));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => Ok(Upstream::Tcp { host: host.into(), port: p }),
            _ => Err(UpstreamAddrError::Port(s.into())),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Upstream::Tcp { host, port } => write!(f, "{host}:{port}"),
            Upstream::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why the broker could not be reached. The client is answered with CONNACK "server unavailable".
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting to broker {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("connecting to broker {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
}

impl UpstreamError {
    /// Bounded label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Connect { source, .. } => match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused",
                std::io::ErrorKind::NotFound => "not_found",
                _ => "io",
            },
        }
    }
}

/// An open connection to the broker.
pub(crate) enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Upstream {
    /// Connects within `deadline`. TCP_NODELAY is set: MQTT is request/response and small packets
    /// must not wait for Nagle.
    pub(crate) async fn connect(&self, deadline: Duration) -> Result<UpstreamStream, UpstreamError> {
        let addr = self.to_string();
        let attempt = async {
            match self {
                Upstream::Tcp { host, port } => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Ok(UpstreamStream::Tcp(s))
                }
                Upstream::Unix(path) => Ok(UpstreamStream::Unix(UnixStream::connect(path).await?)),
            }
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(source)) => Err(UpstreamError::Connect { addr, source }),
            Err(_) => Err(UpstreamError::Timeout { addr, after: deadline }),
        }
    }
}

/// Reading and writing whichever stream it is (the CONNECT and its CONNACK; the splice matches on
/// the variant instead, so its copy loop is compiled for the concrete stream).
impl tokio::io::AsyncRead for UpstreamStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamStream::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_ipv6_and_unix_forms() {
        assert_eq!("broker:1883".parse(), Ok(Upstream::Tcp { host: "broker".into(), port: 1883 }));
        assert_eq!("[::1]:1884".parse(), Ok(Upstream::Tcp { host: "::1".into(), port: 1884 }));
        assert_eq!("unix:/run/m.sock".parse(), Ok(Upstream::Unix("/run/m.sock".into())));
    }

    #[test]
    fn rejects_missing_or_bad_port() {
        assert!(matches!("broker".parse::<Upstream>(), Err(UpstreamAddrError::Form(_))));
        assert!(matches!("broker:0".parse::<Upstream>(), Err(UpstreamAddrError::Port(_))));
        assert!(matches!("broker:http".parse::<Upstream>(), Err(UpstreamAddrError::Port(_))));
        assert_eq!("unix:".parse::<Upstream>(), Err(UpstreamAddrError::EmptyPath));
    }

    #[test]
    fn display_round_trips() {
        for s in ["broker:1883", "[::1]:1884", "unix:/run/m.sock"] {
            assert_eq!(s.parse::<Upstream>().map(|u| u.to_string()), Ok(s.to_string()));
        }
    }
}
