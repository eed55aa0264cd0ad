use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// A test CA (also used by the re-check's tests).
pub(crate) struct Ca {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    pub(crate) pem: String,
}

pub(crate) fn ca(cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A DER CRL of `ca` issued in `year`, with CRL number `number`, revoking `revoked`.
pub(crate) fn crl(ca: &Ca, year: i32, number: u64, revoked: &[u64]) -> Vec<u8> {
    let params = CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(year, 1, 1),
        next_update: rcgen::date_time_ymd(2099, 1, 1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&ca.issuer).expect("crl").der().to_vec()
}

const URL: &str = "http://127.0.0.1:9/ca.crl";

/// A cache fetching `URL`, trusting the CAs in `cas`.
fn cache(dir: &tempfile::TempDir, cas: &[&Ca]) -> Arc<CrlCache> {
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, cas.iter().map(|c| c.pem.as_str()).collect::<String>()).expect("write");
    let settings = CrlSettings { urls: vec![URL.into()], ..CrlSettings::default() };
    CrlCache::new(settings, Some(path), Arc::new(Metrics::new()))
}

#[test]
fn urls_must_be_http_with_a_host() {
    assert_eq!(check_url("http://ca.example/crl"), Ok(()));
    assert_eq!(check_url("http://127.0.0.1:8080/x.crl?a=b"), Ok(()));
    assert!(check_url("https://ca.example/crl").expect_err("https").contains("only http://"));
    assert!(check_url("ldap://ca.example/cn=x").is_err());
    assert!(check_url("ca.example/crl").is_err());
    assert!(check_url("not a url").is_err());
    assert!(check_url("http://user@ca.example/").is_err());
}

#[test]
fn pem_and_der_parse_garbage_and_trailing_bytes_do_not() {
    let ca = ca("CA");
    let der = crl(&ca, 2024, 1, &[7]);
    assert_eq!(crl_der(&der), Ok(der.clone()));
    let text = format!(
        "-----BEGIN X509 CRL-----\n{}\n-----END X509 CRL-----\n",
        base64(&der)
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(crl_der(text.as_bytes()), Ok(der.clone()));
    assert_eq!(crl_der(b"<html>not found</html>").map_err(|e| e.label()), Err("unparsable"));
    let mut trailing = der.clone();
    trailing.push(0);
    assert_eq!(crl_der(&trailing).map_err(|e| e.label()), Err("unparsable"));
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_crl_signed_by_its_client_ca_is_held_and_described() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("Device CA");
    let cache = cache(&dir, &[&ca]);
    assert_eq!(cache.accept(URL, &crl(&ca, 2024, 1, &[1, 2, 3])), Ok(Accepted::New));
    let files = cache.files();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].setting, SETTING);
    assert_eq!(files[0].path, PathBuf::from(URL));
    let info = describe(&files[0].bytes, URL).expect("describes");
    assert_eq!(info.issuer, "CN=Device CA");
    assert_eq!(info.entries, 3);
    assert_eq!(info.this_update, "2024-01-01T00:00:00Z");
    assert_eq!(info.next_update.as_deref(), Some("2099-01-01T00:00:00Z"));
}

#[test]
fn the_same_crl_again_is_not_modified() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("Device CA");
    let cache = cache(&dir, &[&ca]);
    let der = crl(&ca, 2024, 1, &[1]);
    assert_eq!(cache.accept(URL, &der), Ok(Accepted::New));
    assert_eq!(cache.accept(URL, &der), Ok(Accepted::NotModified));
}

#[test]
fn a_crl_signed_by_another_key_under_the_same_name_is_a_bad_signature() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, impostor) = (ca("Device CA"), ca("Device CA"));
    let cache = cache(&dir, &[&ca]);
    let err = cache.accept(URL, &crl(&impostor, 2024, 1, &[1])).expect_err("bad signature");
    assert_eq!(err.label(), "bad_signature", "{err}");
    assert!(cache.files().is_empty());
}

#[test]
fn a_crl_of_a_ca_not_in_client_ca_is_an_unknown_issuer() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, other) = (ca("Device CA"), ca("Other CA"));
    let cache = cache(&dir, &[&ca]);
    let err = cache.accept(URL, &crl(&other, 2024, 1, &[1])).expect_err("unknown issuer");
    assert_eq!(err, CrlError::UnknownIssuer("CN=Other CA".into()));
}

#[test]
fn the_right_ca_is_found_among_several() {
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b) = (ca("A"), ca("B"));
    let cache = cache(&dir, &[&a, &b]);
    assert_eq!(cache.accept(URL, &crl(&b, 2024, 1, &[1])), Ok(Accepted::New));
}

#[test]
fn an_older_crl_is_refused_and_the_newer_one_kept() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("Device CA");
    let cache = cache(&dir, &[&ca]);
    let newer = crl(&ca, 2025, 2, &[1, 2]);
    assert_eq!(cache.accept(URL, &newer), Ok(Accepted::New));
    assert_eq!(cache.accept(URL, &crl(&ca, 2024, 3, &[1])).map_err(|e| e.label()), Err("older"), "thisUpdate");
    assert_eq!(cache.accept(URL, &crl(&ca, 2025, 1, &[1])).map_err(|e| e.label()), Err("older"), "CRL number");
    assert_eq!(cache.files()[0].bytes, newer);
    assert_eq!(cache.accept(URL, &crl(&ca, 2026, 3, &[1, 2, 3])), Ok(Accepted::New));
}

#[test]
fn backoff_starts_at_ten_seconds_and_doubles_up_to_the_refresh_period() {
    let refresh = Duration::from_secs(15 * 60);
    assert_eq!(backoff(refresh, 1), Duration::from_secs(10));
    assert_eq!(backoff(refresh, 2), Duration::from_secs(20));
    assert_eq!(backoff(refresh, 4), Duration::from_secs(80));
    assert_eq!(backoff(refresh, 30), refresh);
    assert_eq!(backoff(Duration::from_millis(300), 1), Duration::from_millis(300));
}

#[test]
fn distribution_points_are_collected_http_only_and_capped() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = ca("Device CA");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec!["ldap://ldap.example/cn=crl".into(), "http://ca.example/device.crl".into()],
    }];
    let key = KeyPair::generate().expect("key");
    let leaf = params.signed_by(&key, &ca.issuer).expect("sign");
    let (_, parsed) = X509Certificate::from_der(leaf.der()).expect("parse");
    assert_eq!(distribution_points(&parsed), vec!["http://ca.example/device.crl".to_string()]);

    let path = dir.path().join("ca.pem");
    std::fs::write(&path, &ca.pem).expect("write");
    let off = CrlCache::new(CrlSettings::default(), Some(path.clone()), Arc::new(Metrics::new()));
    off.saw_client_cert(&parsed);
    assert!(off.urls().is_empty(), "crl_from_distribution_points is off");
    let settings = CrlSettings { from_distribution_points: true, ..CrlSettings::default() };
    let on = CrlCache::new(settings, Some(path), Arc::new(Metrics::new()));
    on.saw_client_cert(&parsed);
    on.saw_client_cert(&parsed);
    assert_eq!(on.urls(), vec!["http://ca.example/device.crl".to_string()]);
    for i in 0..2 * MAX_CRL_URLS {
        on.add_url(&format!("http://ca.example/{i}.crl"));
    }
    assert_eq!(on.urls().len(), MAX_CRL_URLS);
}

/// A one-connection HTTP server on loopback answering `answer` (raw bytes), or never if `None`.
async fn serve_once(answer: Option<Vec<u8>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/ca.crl", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else { return };
        let mut request = [0u8; 1024];
        let _ = tcp.read(&mut request).await;
        match answer {
            Some(bytes) => {
                let _ = tcp.write_all(&bytes).await;
                let _ = tcp.shutdown().await;
            }
            None => tokio::time::sleep(Duration::from_secs(30)).await,
        }
    });
    (url, task)
}

fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n{headers}connection: close\r\n\r\n").into_bytes();
    out.extend_from_slice(body);
    out
}

#[tokio::test]
async fn a_200_body_is_returned() {
    let (url, server) = serve_once(Some(response("200 OK", "content-length: 5\r\n", b"hello"))).await;
    assert_eq!(fetch::get(&url, Duration::from_secs(5), 100).await, Ok(b"hello".to_vec()));
    server.abort();
}

#[tokio::test]
async fn a_404_is_an_http_error() {
    let (url, server) = serve_once(Some(response("404 Not Found", "content-length: 0\r\n", b""))).await;
    assert_eq!(fetch::get(&url, Duration::from_secs(5), 100).await, Err(CrlError::Status(404)));
    server.abort();
}

#[tokio::test]
async fn a_body_over_the_cap_is_too_large_while_read_without_a_length() {
    let body = vec![b'x'; 1000];
    let (url, server) = serve_once(Some(response("200 OK", "", &body))).await;
    assert_eq!(fetch::get(&url, Duration::from_secs(5), 999).await, Err(CrlError::TooLarge(999)));
    server.abort();
}

#[tokio::test]
async fn an_announced_length_over_the_cap_is_too_large_at_once() {
    let (url, server) = serve_once(Some(response("200 OK", "content-length: 1000000\r\n", b"x"))).await;
    assert_eq!(fetch::get(&url, Duration::from_secs(5), 999).await, Err(CrlError::TooLarge(999)));
    server.abort();
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (url, server) = serve_once(None).await;
    let started = std::time::Instant::now();
    assert_eq!(
        fetch::get(&url, Duration::from_millis(300), 100).await,
        Err(CrlError::Timeout(Duration::from_millis(300)))
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}

#[tokio::test]
async fn a_refused_connection_is_an_http_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/ca.crl", listener.local_addr().expect("addr"));
    drop(listener);
    let err = fetch::get(&url, Duration::from_secs(5), 100).await.expect_err("refused");
    assert_eq!(err.label(), "http_error", "{err}");
}
