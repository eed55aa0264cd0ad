//! MQTT over secure WebSockets (`protocol = "websockets"`) in front of a real Mosquitto that has no
//! WebSocket listener: devices with client certificates (a Rust WebSocket client and Python's
//! paho-mqtt) become their certificate's CN at the broker; bad upgrade requests and bad frames get
//! their answers while good WSS and TCP clients keep working.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use mqtls::config::{Config, ListenerProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

fn websockets(config: &mut Config) {
    config.listeners[0].websocket.protocol = ListenerProtocol::Websockets;
}

/// A WebSocket client over TLS to `/mqtt` asking for `subprotocol`, presenting `leaf` if given.
async fn wss(pki: &Pki, port: u16, leaf: Option<&Leaf>, subprotocol: &str) -> Result<Wss, String> {
    let tls = tls_connect(port, client_tls(pki, leaf)).await.map_err(|e| e.to_string())?;
    let mut request = format!("wss://localhost:{port}/mqtt").into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", subprotocol.parse().map_err(|_| "header")?);
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tls))
        .await
        .map_err(|_| "no upgrade answer in time".to_string())?
        .map_err(|e| e.to_string())?;
    let chosen = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
    assert_eq!(chosen, Some(subprotocol.split(',').next().unwrap_or_default().trim()));
    Ok(ws)
}

/// Reads binary messages until one whole MQTT packet is here; returns it (and keeps nothing else:
/// the tests send one request at a time).
async fn next_packet(ws: &mut Wss) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        if let Some(len) = packet_len(&bytes) {
            if bytes.len() >= len {
                return bytes;
            }
        }
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a packet in time") {
            Some(Ok(Message::Binary(b))) => bytes.extend_from_slice(&b),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected binary frames, got {other:?}"),
        }
    }
}

/// An MQTT packet's whole length from its fixed header, once that is complete.
fn packet_len(bytes: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for (i, b) in bytes.iter().skip(1).take(4).enumerate() {
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(1 + i + 1 + len);
        }
    }
    None
}

/// The device's part of a session at `level`: CONNECT one byte per frame (claiming another username),
/// CONNACK, then SUBSCRIBE and PUBLISH together in one frame; the broker's monitor sees the publish on
/// the device's own subtree (the ACL admits only `devices/<username>/#`), and a message published to
/// the device comes back in frames.
async fn device_session(rig: &Rig, level: u8, cn: &str) {
    let leaf = rig.pki.ca.client(cn);
    let mut monitor = Monitor::start(&rig.broker, &format!("devices/{cn}/out")).await;
    let mut ws = wss(&rig.pki, rig.proxy.port(), Some(&leaf), "mqtt").await.expect("upgrade");
    for byte in packet::connect(level, cn, Some("someone-else"), Some(b"pw")) {
        ws.send(Message::Binary(vec![byte].into())).await.expect("send");
    }
    let connack = next_packet(&mut ws).await;
    assert_eq!((connack[0], connack[3]), (0x20, 0), "CONNACK accepted: {connack:?}");
    let mut both = packet::subscribe(level, 1, &format!("devices/{cn}/in"), 0);
    both.extend(packet::publish_qos0(level, &format!("devices/{cn}/out"), b"hello over wss"));
    ws.send(Message::Binary(both.into())).await.expect("send");
    assert_eq!(next_packet(&mut ws).await[0], 0x90, "SUBACK");
    let (topic, payload) = monitor.next().await;
    assert_eq!((topic.as_str(), payload.as_slice()), (format!("devices/{cn}/out").as_str(), &b"hello over wss"[..]));
    let (ok, _, err) = run_tool(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &rig.broker.port.to_string(),
            "-u",
            "monitor",
            "-t",
            &format!("devices/{cn}/in"),
            "-m",
            "to the browser",
        ]
        .map(String::from),
    )
    .await;
    assert!(ok, "{err}");
    let publish = next_packet(&mut ws).await;
    assert_eq!(publish[0] & 0xf0, 0x30, "PUBLISH: {publish:?}");
    assert!(publish.ends_with(b"to the browser"), "{publish:?}");
    ws.send(Message::Binary(packet::DISCONNECT.to_vec().into())).await.expect("send");
    assert!(rig.broker.usernames().contains(&cn.to_string()), "{:?}", rig.broker.usernames());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_device_certificate_over_wss_is_the_brokers_username_in_mqtt_3_1_1_and_5() {
    let rig = rig(websockets).await;
    device_session(&rig, 4, "ws-device-4").await;
    device_session(&rig, 5, "ws-device-5").await;
    assert_eq!(rig.proxy.metric(r#"mqtls_websocket_upgrades_total{transport="websockets"}"#), 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn old_paho_javascripts_mqttv3_1_subprotocol_is_answered_with_itself() {
    let rig = rig(websockets).await;
    let leaf = rig.pki.ca.client("ws-old");
    let mut ws = wss(&rig.pki, rig.proxy.port(), Some(&leaf), "mqttv3.1").await.expect("upgrade");
    ws.send(Message::Binary(packet::connect(3, "ws-old", None, None).into())).await.expect("send");
    assert_eq!(next_packet(&mut ws).await, [0x20, 2, 0, 0]);
}

/// Opens TLS (with a client certificate), writes `head`, and returns the stream.
async fn raw(rig: &Rig, cn: &str, head: &str) -> TlsStream<TcpStream> {
    let leaf = rig.pki.ca.client(cn);
    let mut tls = tls_connect(rig.proxy.port(), client_tls(&rig.pki, Some(&leaf))).await.expect("tls");
    tls.write_all(head.as_bytes()).await.expect("write");
    tls
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// A good upgrade done by hand, for sending frames no WebSocket library would.
async fn raw_upgraded(rig: &Rig, cn: &str) -> TlsStream<TcpStream> {
    let mut tls = raw(rig, cn, &upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n")).await;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tokio::time::timeout(WAIT, tls.read_exact(&mut byte)).await.expect("101 in time").expect("read");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    tls
}

/// A masked client frame.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [7u8, 1, 9, 3];
    let mut out = vec![0x80 | opcode, if masked { 0x80 } else { 0 } | payload.len() as u8];
    if masked {
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A WebSocket round trip and a TCP (8883) round trip through mqtls to the broker.
async fn good_clients_round_trip(rig: &Rig, tcp: &Mqtls, n: u32) {
    device_session(rig, 4, &format!("ws-good-{n}")).await;
    let leaf = rig.pki.ca.client("tcp-good");
    let (c, k) = leaf.write(rig.pki.dir.path(), &format!("tcp-good-{n}"));
    let mut monitor = Monitor::start(&rig.broker, "devices/tcp-good/#").await;
    let mut args = mosquitto_tls_args(&rig.pki, tcp.port(), Some((&c, &k)));
    args.extend(["-t", "devices/tcp-good/alive", "-m", "tcp still here"].map(String::from));
    let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
    assert!(ok, "TCP client failed: {err}");
    assert_eq!(monitor.next().await.1, b"tcp still here");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_upgrade_requests_get_their_http_answers_while_good_clients_keep_working() {
    let rig = rig(|c| {
        websockets(c);
        c.global.limits.handshake_timeout = Duration::from_secs(3);
        c.listeners[0].websocket.ws_allowed_origins =
            mqtls::config::Origins::new(&["https://dash.example.org".into()]).expect("glob");
    })
    .await;
    let tcp = Mqtls::start(rig.pki.config(rig.broker.upstream())).await;
    // A slowloris holds its upgrade open while everything else happens.
    let stalled_at = Instant::now();
    let mut stalled = raw(&rig, "bad-stalled", "GET /mqtt HTTP/1.1\r\nHost: localhost\r\n").await;
    let cases = [
        (upgrade_request("/other", "Sec-WebSocket-Protocol: mqtt\r\n"), "HTTP/1.1 404 ", "wrong_path"),
        ("GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n".to_string(), "HTTP/1.1 426 ", "not_upgrade"),
        (upgrade_request("/mqtt", ""), "HTTP/1.1 400 ", "subprotocol"),
        (upgrade_request("/mqtt", "Sec-WebSocket-Protocol: chat\r\n"), "HTTP/1.1 400 ", "subprotocol"),
        (
            upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://evil.example\r\n"),
            "HTTP/1.1 403 ",
            "origin",
        ),
    ];
    for (i, (head, status, _)) in cases.iter().enumerate() {
        let mut tls = raw(&rig, "bad-http", head).await;
        let answer = String::from_utf8_lossy(&read_to_close(&mut tls).await).to_string();
        assert!(answer.starts_with(status), "{head:?} answered {answer:?}");
        good_clients_round_trip(&rig, &tcp, i as u32).await;
    }
    // An allowed browser origin upgrades.
    let mut tls = raw(
        &rig,
        "ok-origin",
        &upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://dash.example.org\r\n"),
    )
    .await;
    let mut head = [0u8; 13];
    tls.read_exact(&mut head).await.expect("answer");
    assert_eq!(&head, b"HTTP/1.1 101 ");
    // The slowloris is closed at the handshake deadline, without an answer.
    assert!(read_to_close(&mut stalled).await.is_empty());
    let took = stalled_at.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "closed at the deadline: {took:?}");
    // Each refusal is counted once its connection's task has ended, which can be just after the
    // client saw the close.
    let refusals = [("wrong_path", 1.0), ("not_upgrade", 1.0), ("subprotocol", 2.0), ("origin", 1.0), ("timeout", 1.0)];
    eventually("every refusal counted under its reason", || {
        let metrics = rig.proxy.metrics_text();
        async move {
            refusals.iter().all(|(reason, count)| {
                sample(&metrics, &format!("mqtls_websocket_refusals_total{{reason=\"{reason}\"}}")) == *count
            })
        }
    })
    .await;
    assert!(!rig.broker.usernames().iter().any(|u| u.starts_with("bad-")), "no bad client reached the broker");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_are_closed_with_their_close_codes_while_good_clients_keep_working() {
    let rig = rig(|c| {
        websockets(c);
        c.global.limits.connect_timeout = Duration::from_secs(2);
    })
    .await;
    let tcp = Mqtls::start(rig.pki.config(rig.broker.upstream())).await;
    let mut oversized = vec![0x82, 0x80 | 127];
    oversized.extend_from_slice(&(2u64 << 20).to_be_bytes());
    oversized.extend_from_slice(&[1, 2, 3, 4]);
    // The header says 2 bytes (the start of a CONNECT); what follows is read as the next frame's header,
    // whose reserved bits are set.
    let mut short_lie = frame(2, &[0x10, 0x20], true);
    short_lie.extend_from_slice(&[0xf2, 0x80, 1, 2, 3, 4]);
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("text", frame(1, b"hello", true), 1003),
        ("unmasked", frame(2, &packet::connect(4, "bad-unmasked", None, None), false), 1002),
        ("oversized", oversized, 1009),
        ("short-lie", short_lie, 1002),
    ];
    for (i, (what, wire, code)) in cases.into_iter().enumerate() {
        let mut tls = raw_upgraded(&rig, &format!("bad-{what}")).await;
        tls.write_all(&wire).await.expect("write");
        let started = Instant::now();
        let answer = read_to_close(&mut tls).await;
        let mut close = vec![0x88, 2];
        close.extend_from_slice(&code.to_be_bytes());
        assert_eq!(answer, close, "{what}: a close frame with code {code}");
        assert!(started.elapsed() < Duration::from_secs(1), "{what}: closed at once");
        good_clients_round_trip(&rig, &tcp, i as u32).await;
    }
    // A header announcing more than it sends: the CONNECT never completes, closed at connect_timeout.
    let mut tls = raw_upgraded(&rig, "bad-long-lie").await;
    let mut long_lie = vec![0x82, 0x80 | 100, 1, 2, 3, 4];
    long_lie.extend_from_slice(&[0u8; 10]);
    tls.write_all(&long_lie).await.expect("write");
    let started = Instant::now();
    let _ = read_to_close(&mut tls).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "closed at the CONNECT deadline");
    good_clients_round_trip(&rig, &tcp, 9).await;
    // A WebSocket library's text frame gets the same answer.
    let leaf = rig.pki.ca.client("bad-text-lib");
    let mut ws = wss(&rig.pki, rig.proxy.port(), Some(&leaf), "mqtt").await.expect("upgrade");
    ws.send(Message::Text("{\"connect\":1}".into())).await.expect("send");
    match tokio::time::timeout(WAIT, ws.next()).await.expect("answer in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Unsupported),
        other => panic!("expected close 1003, got {other:?}"),
    }
    assert!(!rig.broker.usernames().iter().any(|u| u.starts_with("bad-")), "no bad client reached the broker");
    // Counted by the close code each got (each connection's end is counted as its task ends).
    eventually("the violations counted by close code", || {
        let text = rig.proxy.metrics_text();
        async move {
            [("1002", 2.0), ("1003", 2.0), ("1009", 1.0)]
                .iter()
                .all(|(code, n)| sample(&text, &format!("mqtls_websocket_violations_total{{code=\"{code}\"}}")) == *n)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_closing_is_close_1000_for_the_websocket_client() {
    let rig = rig(websockets).await;
    let leaf = rig.pki.ca.client("ws-kicked");
    let mut ws = wss(&rig.pki, rig.proxy.port(), Some(&leaf), "mqtt").await.expect("upgrade");
    ws.send(Message::Binary(packet::connect(4, "ws-kicked", None, None).into())).await.expect("send");
    assert_eq!(next_packet(&mut ws).await, [0x20, 2, 0, 0]);
    // The broker drops a client that publishes outside the MQTT rules: a PUBLISH with QoS 3.
    ws.send(Message::Binary(vec![0x36, 0x03, 0x00, 0x01, b'a'].into())).await.expect("send");
    match tokio::time::timeout(WAIT, ws.next()).await.expect("answer in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected close 1000, got {other:?}"),
    }
}

/// The venv tests/run fills from tests/requirements.txt.
fn pyenv_python() -> PathBuf {
    let dir = std::env::var_os("MQTLS_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv"));
    let python = dir.join("bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash tests/run`, or `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r \
         tests/requirements.txt` (Debian packages python3 and python3-venv)",
        python.display()
    );
    python
}

/// paho-mqtt over wss:// with a client certificate: publishes one QoS 1 message and disconnects.
const PAHO: &str = r#"
import sys, ssl, paho.mqtt.client as mqtt
port, ca, cert, key, cn, version = sys.argv[1:7]
proto = {"4": mqtt.MQTTv311, "5": mqtt.MQTTv5}[version]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cn, transport="websockets", protocol=proto)
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
c.ws_set_options(path="/mqtt")
c.connect("localhost", int(port), keepalive=30)
c.loop_start()
info = c.publish(f"devices/{cn}/paho", f"paho v{version} over wss", qos=1)
info.wait_for_publish(timeout=10)
assert info.is_published(), "not published"
c.disconnect()
c.loop_stop()
print("published")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn paho_mqtt_over_wss_with_a_certificate_is_its_cn_in_mqtt_3_1_1_and_5() {
    let python = pyenv_python();
    let rig = rig(websockets).await;
    for version in ["4", "5"] {
        let cn = format!("paho-v{version}");
        let (cert, key) = rig.pki.ca.client(&cn).write(rig.pki.dir.path(), &cn);
        let mut monitor = Monitor::start(&rig.broker, &format!("devices/{cn}/#")).await;
        let args = [
            "-c".to_string(),
            PAHO.to_string(),
            rig.proxy.port().to_string(),
            rig.pki.ca_file.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
            cn.clone(),
            version.to_string(),
        ];
        let (ok, out, err) = run_tool(&python.display().to_string(), &args).await;
        assert!(ok && out.contains("published"), "paho v{version}: {out}{err}");
        let (topic, payload) = monitor.next().await;
        assert_eq!(topic, format!("devices/{cn}/paho"));
        assert_eq!(payload, format!("paho v{version} over wss").as_bytes());
        assert!(rig.broker.usernames().contains(&cn), "{:?}", rig.broker.usernames());
    }
}

/// Behind a load balancer that sends PROXY v2, the broker gets a PROXY v2 header naming the balancer's
/// client and the certificate's CN, then the CONNECT with the CN as username: the same as on 8883.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_in_and_out_work_over_websockets_as_on_8883() {
    use mqtls::conn::proxy_protocol::UpstreamProxyProtocol;
    use ppp::v2::{Addresses, Builder, Command, Header, Protocol, Version};
    let pki = Pki::new();
    let (upstream, captured) = capturing_upstream().await;
    let mut config = pki.config(upstream);
    websockets(&mut config);
    config.listeners[0].proxy_protocol.accept_from = vec!["127.0.0.0/8".parse().expect("range")];
    config.listeners[0].proxy_protocol.upstream = UpstreamProxyProtocol::V2;
    let proxy = Mqtls::start(config).await;
    let (client, frontend): (std::net::SocketAddr, std::net::SocketAddr) =
        ("203.0.113.7:40000".parse().expect("addr"), "198.51.100.1:443".parse().expect("addr"));
    let header = Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (client, frontend))
        .build()
        .expect("v2 header");
    let mut tcp = TcpStream::connect(("127.0.0.1", proxy.port())).await.expect("connect");
    tcp.write_all(&header).await.expect("header");
    let leaf = pki.ca.client("ws-behind-lb");
    let tls = tokio_rustls::TlsConnector::from(client_tls(&pki, Some(&leaf)))
        .connect(rustls::pki_types::ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    let mut request = format!("wss://localhost:{}/mqtt", proxy.port()).into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await.expect("upgrade");
    ws.send(Message::Binary(packet::connect(4, "lb", None, None).into())).await.expect("send");
    assert_eq!(next_packet(&mut ws).await, [0x20, 2, 0, 0]);
    let got = captured.await.expect("captured");
    let out = Header::try_from(got.as_slice()).expect("a v2 header first");
    assert_eq!(out.addresses, Addresses::from((client, frontend)));
    let cn = out.tlvs().filter_map(Result::ok).find_map(|tlv| match tlv {
        ppp::v2::TypeLengthValue { kind: 0x20, value } => {
            // The SSL TLV: client flags, verify, then sub-TLVs; the CN is sub-TLV 0x22.
            let mut subs = value.get(5..).unwrap_or_default();
            while let [kind, hi, lo, rest @ ..] = subs {
                let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                if *kind == 0x22 {
                    return Some(String::from_utf8_lossy(&rest[..len]).to_string());
                }
                subs = &rest[len..];
            }
            None
        }
        _ => None,
    });
    assert_eq!(cn.as_deref(), Some("ws-behind-lb"));
    assert_eq!(&got[out.len()..], packet::connect(4, "lb", Some("ws-behind-lb"), None));
}

/// A client's close ends the session like a TCP FIN: the broker sees the connection go, and the close
/// is answered (the close handshake completes) before TLS ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_close_is_answered_and_ends_the_session_at_the_broker() {
    let rig = rig(websockets).await;
    let leaf = rig.pki.ca.client("ws-leaving");
    let mut ws = wss(&rig.pki, rig.proxy.port(), Some(&leaf), "mqtt").await.expect("upgrade");
    ws.send(Message::Binary(packet::connect(4, "ws-leaving", None, None).into())).await.expect("send");
    assert_eq!(next_packet(&mut ws).await, [0x20, 2, 0, 0]);
    ws.close(None).await.expect("close sent");
    match tokio::time::timeout(WAIT, ws.next()).await.expect("answer in time") {
        Some(Ok(Message::Close(_))) => {}
        other => panic!("expected the close answered, got {other:?}"),
    }
    rig.broker.expect_log("Client ws-leaving closed its connection").await;
}
