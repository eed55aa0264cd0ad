//! `mqtls reload`: asks the running mqtls to reload, through its admin endpoint's `POST /reload`, and
//! waits for the outcome. Unlike SIGHUP, the answer says whether the new files and settings are in
//! service, so `systemctl reload mqtls` (the unit's `ExecReload`) fails when they are refused.
//!
//! The one thing it needs from the configuration is the admin address, read on its own
//! ([`Config::admin_address`]): the running process, not this command, validates the rest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Config, ConfigError, Origin, RunArgs};

/// Longest wait for the answer. A reload reads a few files; the admin server ends any request
/// after 10 s, so this is only reached when the process hangs.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why `mqtls reload` could not report a reload that was taken.
#[derive(Debug, thiserror::Error)]
pub enum ReloadCommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "no admin address {place}: mqtls reload asks the running mqtls through it; set admin = \"127.0.0.1:9883\" \
         in the configuration file and restart mqtls, or give --admin ADDR (kill -HUP reloads too, but reports nothing)"
    )]
    NoAdmin { place: String },
    #[error("no mqtls answers at {addr} (admin, from {origin}): {err}; is it running?")]
    Unreachable { addr: SocketAddr, origin: Origin, err: std::io::Error },
    #[error("mqtls at {addr} (admin, from {origin}) did not answer within {}s", ANSWER_TIMEOUT.as_secs())]
    Timeout { addr: SocketAddr, origin: Origin },
    #[error("{addr} (admin, from {origin}) answered {status}: {body}")]
    Unexpected { addr: SocketAddr, origin: Origin, status: StatusCode, body: String },
    /// The running process refused the new files or settings; what it had in service stays.
    #[error("reload refused, the configuration in service is kept: {0}")]
    Refused(String),
}

impl ReloadCommandError {
    /// Whether the configuration is what must change (exit status 2), rather than the process's state.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            ReloadCommandError::Config(_) | ReloadCommandError::NoAdmin { .. } | ReloadCommandError::Refused(_)
        )
    }
}

/// Asks the mqtls that `args` lead to (its admin address) to reload; returns what it put in service.
pub async fn reload(args: &RunArgs) -> Result<String, ReloadCommandError> {
    let Some((configured, origin)) = Config::admin_address(args)? else {
        let place = match &args.config {
            Some(path) => format!("in {}", path.display()),
            None => "given (neither --config FILE nor --admin ADDR)".to_string(),
        };
        return Err(ReloadCommandError::NoAdmin { place });
    };
    let addr = reachable(configured);
    let (status, body) = match tokio::time::timeout(ANSWER_TIMEOUT, post(addr, "/reload")).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(err)) => return Err(ReloadCommandError::Unreachable { addr, origin, err }),
        Err(_) => return Err(ReloadCommandError::Timeout { addr, origin }),
    };
    let body = body.trim_end().to_string();
    match status {
        StatusCode::OK => Ok(body),
        StatusCode::UNPROCESSABLE_ENTITY => Err(ReloadCommandError::Refused(body)),
        status => Err(ReloadCommandError::Unexpected { addr, origin, status, body }),
    }
}

/// Where to connect for an admin server bound to `addr`: on every address means loopback here.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

/// One HTTP/1.1 POST with an empty body; the status and the body as text.
async fn post(addr: SocketAddr, path: &str) -> std::io::Result<(StatusCode, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(other)?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(other)?;
    let response = sender.send_request(request).await.map_err(other)?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(other)?.to_bytes();
    conn.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn other(err: impl std::error::Error + Send + Sync + 'static) -> std::io::Error {
    std::io::Error::other(err)
}

#[cfg(test)]
mod tests {
    use super::reachable;

    #[test]
    fn an_admin_server_on_every_address_is_reached_on_loopback() {
        let at = |s: &str| reachable(s.parse().expect("addr")).to_string();
        assert_eq!(at("0.0.0.0:9883"), "127.0.0.1:9883");
        assert_eq!(at("[::]:9883"), "[::1]:9883");
        assert_eq!(at("10.0.0.5:9883"), "10.0.0.5:9883");
    }
}
