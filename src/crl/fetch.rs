//! Fetching: one HTTP/1.1 GET per URL on a plain TCP connection (hyper's client), bounded in time
//! (`crl_fetch_timeout`, for the whole exchange) and in size (`crl_max_size`, enforced while the body
//! is read), and the loop that refetches every `crl_refresh`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Accepted, CrlCache, CrlError};
use crate::reload::Reloader;

/// GETs `url` and returns the body: an error unless the answer is a 200 whose body has at most
/// `max_size` bytes, all within `timeout`.
pub(crate) async fn get(url: &str, timeout: Duration, max_size: usize) -> Result<Vec<u8>, CrlError> {
    match tokio::time::timeout(timeout, get_unbounded(url, max_size)).await {
        Ok(result) => result,
        Err(_) => Err(CrlError::Timeout(timeout)),
    }
}

/// Aborts the connection task when the fetch ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn get_unbounded(url: &str, max_size: usize) -> Result<Vec<u8>, CrlError> {
    let uri: Uri = url.parse().map_err(|e| CrlError::Connect(format!("not a URL: {e}")))?;
    let authority = uri.authority().ok_or_else(|| CrlError::Connect("no host in the URL".into()))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port)).await.map_err(|e| CrlError::Connect(format!("{authority}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| CrlError::Connect(e.to_string()))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "CRL fetch connection ended");
        }
    }));
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::USER_AGENT, concat!("mqtls/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::ACCEPT, "application/pkix-crl, application/x-pem-file, */*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| CrlError::Connect(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| CrlError::Connect(e.to_string()))?;
    if response.status() != StatusCode::OK {
        return Err(CrlError::Status(response.status().as_u16()));
    }
    let announced = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > max_size as u64) {
        return Err(CrlError::TooLarge(max_size));
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CrlError::Connect(format!("reading the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len().saturating_add(data.len()) > max_size {
                return Err(CrlError::TooLarge(max_size));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Fetches one URL and hands the body to the cache; records the result.
async fn fetch_one(cache: &CrlCache, url: &str) -> Result<Accepted, CrlError> {
    let settings = cache.settings();
    let result = match get(url, settings.fetch_timeout, settings.max_size).await {
        Ok(body) => cache.accept(url, &body),
        Err(e) => Err(e),
    };
    cache.record(url, &result);
    result
}

impl CrlCache {
    /// Fetches every URL due now, all at once; whether a new CRL is held for any of them.
    pub(crate) async fn fetch_due(self: &Arc<Self>) -> bool {
        let (due, _) = self.due();
        let mut fetches = JoinSet::new();
        for url in due {
            let cache = self.clone();
            fetches.spawn(async move { fetch_one(&cache, &url).await });
        }
        let mut changed = false;
        while let Some(done) = fetches.join_next().await {
            match done {
                Ok(result) => changed |= result == Ok(Accepted::New),
                Err(err) => warn!(%err, "CRL fetch task failed"),
            }
        }
        self.check_stale();
        changed
    }

    /// Fetches every URL once, as at start-up: the URLs whose fetch failed, with the reason.
    pub(crate) async fn fetch_all_once(self: &Arc<Self>) -> Failures {
        let mut fetches = JoinSet::new();
        for url in self.urls() {
            let cache = self.clone();
            fetches.spawn(async move {
                let result = fetch_one(&cache, &url).await;
                (url, result)
            });
        }
        let mut failed = Vec::new();
        while let Some(done) = fetches.join_next().await {
            if let Ok((url, Err(err))) = done {
                failed.push((url, err));
            }
        }
        failed.sort_by(|a, b| a.0.cmp(&b.0));
        self.check_stale();
        failed
    }

    /// Refetches each URL when due (and new distribution points at once) until `stop`; asks
    /// `reloader` to rebuild the TLS configuration whenever a new CRL is held.
    pub(crate) async fn run(self: Arc<Self>, reloader: Arc<Reloader>, stop: CancellationToken) {
        loop {
            let (_, next) = self.due();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
            let fetch = self.fetch_due();
            let changed = tokio::select! {
                _ = stop.cancelled() => break,
                changed = fetch => changed,
            };
            if changed {
                reloader.refresh();
            }
        }
        debug!("CRL fetcher stopped");
    }
}

/// The URLs whose fetch failed, with the reason.
pub(crate) type Failures = Vec<(String, CrlError)>;

/// `mqtls check`: fetches every URL of `tls` once (on a runtime of its own) and returns the cache
/// holding what was fetched, and the URLs that failed with the reason.
pub fn fetch_once_blocking(tls: &crate::tls::TlsSettings) -> std::io::Result<(Arc<CrlCache>, Failures)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cache =
        CrlCache::new(tls.crl_fetch.clone(), tls.client_ca.clone(), Arc::new(crate::ops::metrics::Metrics::new()));
    let failed = runtime.block_on(cache.fetch_all_once());
    Ok((cache, failed))
}
