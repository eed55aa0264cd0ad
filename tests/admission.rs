//! Admission: per-source and process-wide limits at accept (before any TLS work), and the cap on the
//! connections one certificate may hold. A real Mosquitto behind mqtls; clients from distinct
//! loopback addresses (127.0.0.x) and, behind a trusted load balancer, PROXY headers.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// TCP from `source` (a loopback address), then `prefix` (a PROXY header, or nothing), then TLS.
async fn tls_from(
    source: Ipv4Addr,
    port: u16,
    prefix: &[u8],
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let mut tcp = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    tcp.write_all(prefix).await?;
    let connect =
        tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("localhost").expect("name"), tcp);
    let mut tls = tokio::time::timeout(WAIT, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    tls.flush().await?;
    Ok(tls)
}

/// Sends a CONNECT and reports whether a CONNACK 0 came back; the connection stays open.
async fn connected<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S, client_id: &str) -> bool {
    if tls.write_all(&packet::connect(4, client_id, None, None)).await.is_err() {
        return false;
    }
    matches!(read_exact_within(tls, 4).await, Ok(ack) if ack == [0x20, 2, 0, 0])
}

/// A held MQTT connection from `source`, or `None` if it was refused.
async fn hold_from(
    source: Ipv4Addr,
    port: u16,
    prefix: &[u8],
    config: Arc<rustls::ClientConfig>,
    client_id: &str,
) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut tls = tls_from(source, port, prefix, config).await.ok()?;
    connected(&mut tls, client_id).await.then_some(tls)
}

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

#[tokio::test(flavor = "multi_thread")]
async fn the_n_plus_first_connection_from_one_source_is_closed_at_accept_while_another_source_connects() {
    let Rig { pki, broker: _broker, proxy } = rig(|c| c.global.admission.per_source = Some(2)).await;
    let client = client_tls(&pki, Some(&pki.ca.client("device-1")));
    let _first = hold_from(A, proxy.port(), b"", client.clone(), "a1").await.expect("1st from A");
    let _second = hold_from(A, proxy.port(), b"", client.clone(), "a2").await.expect("2nd from A");
    assert!(hold_from(A, proxy.port(), b"", client.clone(), "a3").await.is_none(), "3rd from A refused");
    assert!(hold_from(B, proxy.port(), b"", client.clone(), "b1").await.is_some(), "B is not affected");
    assert_eq!(proxy.metric(r#"mqtls_connections_total{outcome="rate_limited"}"#), 1.0);
    drop(_first);
    let port = proxy.port();
    eventually("A's closed connection frees its place", || {
        let client = client.clone();
        async move { hold_from(A, port, b"", client, "a4").await.is_some() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_reconnecting_in_a_tight_loop_gets_its_rate_and_no_more() {
    let Rig { pki, broker: _broker, proxy } = rig(|c| c.global.admission.rate_per_source = Some(2)).await;
    let client = client_tls(&pki, Some(&pki.ca.client("device-1")));
    let mut admitted = 0;
    for i in 0..20 {
        if hold_from(A, proxy.port(), b"", client.clone(), &format!("loop-{i}")).await.is_some() {
            admitted += 1;
        }
    }
    // Two at once (the bucket), plus what refilled at 2/s while the loop ran.
    assert!((2..=6).contains(&admitted), "{admitted} of 20 admitted");
    assert!(proxy.metric(r#"mqtls_connections_total{outcome="rate_limited"}"#) >= 14.0);
    assert!(hold_from(B, proxy.port(), b"", client, "b").await.is_some(), "another source is not affected");
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_load_balancer_the_source_is_the_address_its_proxy_header_names() {
    let Rig { pki, broker: _broker, proxy } = rig(|c| {
        c.global.admission.per_source = Some(1);
        c.listeners[0].proxy_protocol.accept_from =
            vec![mqtls::conn::proxy_protocol::parse_source_range("127.0.0.2").expect("range")];
    })
    .await;
    let client = client_tls(&pki, Some(&pki.ca.client("device-1")));
    let header = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 5555 8883\r\n").into_bytes();
    let _first = hold_from(A, proxy.port(), &header("203.0.113.7"), client.clone(), "c1").await.expect("first client");
    assert!(
        hold_from(A, proxy.port(), &header("203.0.113.7"), client.clone(), "c2").await.is_none(),
        "the same client through the balancer is refused"
    );
    assert!(
        hold_from(A, proxy.port(), &header("203.0.113.8"), client.clone(), "c3").await.is_some(),
        "another client through the same balancer is not: the balancer itself is not the source"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_rate_closes_connections_past_its_burst() {
    let Rig { pki, broker: _broker, proxy } = rig(|c| {
        c.global.admission.rate = Some(1);
        c.global.admission.burst = Some(3);
    })
    .await;
    let client = client_tls(&pki, Some(&pki.ca.client("device-1")));
    let mut admitted = 0;
    for i in 0..10 {
        let source = Ipv4Addr::new(127, 0, 1, i);
        if hold_from(source, proxy.port(), b"", client.clone(), &format!("s{i}")).await.is_some() {
            admitted += 1;
        }
    }
    assert!((3..=5).contains(&admitted), "{admitted} of 10 admitted from 10 sources");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_over_its_connection_limit_gets_quota_exceeded_and_others_are_unaffected() {
    let Rig { pki, broker, proxy } = rig(|c| c.global.admission.per_identity = Some(1)).await;
    let cloned = pki.ca.client("cloned-device");
    let _first = Device::connect(&pki, proxy.port(), "cloned-device", &cloned).await;

    let (cert, key) = cloned.write(pki.dir.path(), "clone");
    let publish = |version: &str, cert: &std::path::Path, key: &std::path::Path| {
        let mut args = mosquitto_tls_args(&pki, proxy.port(), Some((cert, key)));
        args.extend(["-V", version, "-t", "devices/x", "-m", "hi"].map(String::from));
        args
    };
    let (ok, _, err) = run_tool("mosquitto_pub", &publish("mqttv5", &cert, &key)).await;
    assert!(!ok && err.contains("Quota exceeded"), "MQTT 5 clone: {err}");
    let (ok, _, err) = run_tool("mosquitto_pub", &publish("mqttv311", &cert, &key)).await;
    assert!(!ok && err.to_lowercase().contains("unavailable"), "MQTT 3.1.1 clone: {err}");
    // Counted once the refused connection is closed, which may be just after the client saw its CONNACK.
    eventually("both refusals counted", || async { proxy.metric("mqtls_identity_limit_refusals_total") == 2.0 }).await;

    let (cert, key) = pki.ca.client("other-device").write(pki.dir.path(), "other");
    let (ok, _, err) = run_tool("mosquitto_pub", &publish("mqttv5", &cert, &key)).await;
    assert!(ok, "another certificate connects: {err}");
    drop(broker);
}
