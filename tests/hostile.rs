//! Hostile input and failing peers. Each test checks that the bad connection is closed (or answered with
//! the right CONNACK) within its deadline, and that a good client still round-trips a message meanwhile;
//! the floods and the stalled reader also check the proxy's memory stays bounded.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use mqtls::conn::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A good device publishes through `port` and the broker's monitor sees the message.
async fn good_client_round_trips(pki: &Pki, broker: &Mosquitto, port: u16) {
    let device = pki.ca.client("device-7");
    let (c, k) = device.write(pki.dir.path(), &format!("good-{}", free_port()));
    let mut monitor = Monitor::start(broker, "devices/device-7/#").await;
    let mut args = mosquitto_tls_args(pki, port, Some((&c, &k)));
    args.extend(["-t", "devices/device-7/alive", "-m", "still here"].map(String::from));
    let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
    assert!(ok, "good client failed: {err}");
    assert_eq!(monitor.next().await.1, b"still here");
}

/// Sends `bytes` as the first thing after the TLS handshake and returns everything mqtls answered
/// before closing, with the time it took to close.
async fn answer_to(rig: &Rig, bytes: &[u8]) -> (Vec<u8>, Duration) {
    let device = rig.pki.ca.client("device-42");
    let mut tls = tls_connect(rig.proxy.port(), client_tls(&rig.pki, Some(&device))).await.expect("tls");
    tls.write_all(bytes).await.expect("write");
    let started = Instant::now();
    let answer = read_to_close(&mut tls).await;
    (answer, started.elapsed())
}

/// The bad connection gets `expected` and is closed at once, and a good client works right after.
async fn refused_with(rig: &Rig, bytes: &[u8], expected: &[u8]) {
    let (answer, took) = answer_to(rig, bytes).await;
    assert_eq!(answer, expected);
    // The nearest deadline (connect_timeout) is 10 s: well under it means the refusal closed it.
    assert!(took < Duration::from_secs(5), "closed at once, not at a deadline ({took:?})");
    good_client_round_trips(&rig.pki, &rig.broker, rig.proxy.port()).await;
    assert!(!rig.broker.usernames().contains(&"device-42".to_string()), "the bad client never reached the broker");
}

fn connect_v4_with(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 30];
    body.extend_from_slice(payload);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_mqtt_sent_to_the_tls_port_is_closed() {
    let rig = rig(|_| {}).await;
    let mut tcp = TcpStream::connect(rig.proxy.addr).await.expect("connect");
    tcp.write_all(&packet::connect(4, "plain", None, None)).await.expect("write");
    let answer = read_to_close(&mut tcp).await;
    assert!(!answer.starts_with(&[0x20]), "no CONNACK to a plain-text client: {answer:?}");
    good_client_round_trips(&rig.pki, &rig.broker, rig.proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn random_bytes_instead_of_a_client_hello_are_closed() {
    let rig = rig(|_| {}).await;
    let mut tcp = TcpStream::connect(rig.proxy.addr).await.expect("connect");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = tcp.write_all(&noise).await;
    read_to_close(&mut tcp).await;
    good_client_round_trips(&rig.pki, &rig.broker, rig.proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_done_but_no_connect_sent_is_closed_at_the_connect_deadline() {
    let rig = rig(|c| c.global.limits.connect_timeout = Duration::from_millis(500)).await;
    let device = rig.pki.ca.client("device-42");
    let mut silent = tls_connect(rig.proxy.port(), client_tls(&rig.pki, Some(&device))).await.expect("tls");
    let connected = Instant::now();
    good_client_round_trips(&rig.pki, &rig.broker, rig.proxy.port()).await;
    assert_eq!(read_to_close(&mut silent).await, Vec::<u8>::new());
    // At the 500 ms deadline, not the 10 s default (the margin is for a slow machine).
    assert!(connected.elapsed() < Duration::from_secs(5), "closed after {:?}", connected.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_claiming_the_maximum_length_is_refused_before_the_trickle_that_follows() {
    let rig = rig(|_| {}).await;
    let device = rig.pki.ca.client("device-42");
    let mut tls = tls_connect(rig.proxy.port(), client_tls(&rig.pki, Some(&device))).await.expect("tls");
    // Remaining length 268,435,455, then the body one byte at a time.
    tls.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f]).await.expect("header");
    let started = Instant::now();
    let mut closed = false;
    for b in b"\x00\x04MQTT\x04\x02\x00\x1e" {
        if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !closed {
        assert_eq!(read_to_close(&mut tls).await, Vec::<u8>::new());
    }
    // The trickle alone takes 0.5 s and the nearest deadline is 10 s.
    assert!(started.elapsed() < Duration::from_secs(5), "refused at the header, not at a deadline");
    good_client_round_trips(&rig.pki, &rig.broker, rig.proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_five_byte_remaining_length_is_refused() {
    let rig = rig(|_| {}).await;
    refused_with(&rig, &[0x10, 0x80, 0x80, 0x80, 0x80, 0x01], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_protocol_name_is_refused() {
    let rig = rig(|_| {}).await;
    let mut packet = packet::connect(4, "c", None, None);
    packet[4..8].copy_from_slice(b"MQTX");
    refused_with(&rig, &packet, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_protocol_level_gets_connack_unacceptable_version() {
    let rig = rig(|_| {}).await;
    let mut packet = packet::connect(4, "c", None, None);
    packet[8] = 6;
    refused_with(&rig, &packet, &[0x20, 2, 0, 1]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reserved_connect_flag_is_refused_in_each_version() {
    let rig = rig(|_| {}).await;
    let mut v4 = packet::connect(4, "c", None, None);
    v4[9] |= 0x01;
    refused_with(&rig, &v4, &[]).await;
    let mut v5 = packet::connect(5, "c", None, None);
    v5[9] |= 0x01;
    refused_with(&rig, &v5, &[0x20, 3, 0, 0x81, 0]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_username_flag_with_a_truncated_string_is_refused() {
    let rig = rig(|_| {}).await;
    // Client id "c", then a username claiming 40 bytes of which 3 are there.
    refused_with(&rig, &connect_v4_with(0x82, b"\x00\x01c\x00\x28abc"), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_the_username_is_refused() {
    let rig = rig(|_| {}).await;
    refused_with(&rig, &connect_v4_with(0x82, b"\x00\x01c\x00\x02\xc3\x28"), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_in_the_client_id_is_refused() {
    let rig = rig(|_| {}).await;
    refused_with(&rig, &connect_v4_with(0x02, b"\x00\x02\xff\xfe"), &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_mqtt5_property_length_past_the_packet_gets_connack_malformed() {
    let rig = rig(|_| {}).await;
    // Properties claim 20 bytes; the packet ends after the client id.
    let body = [&[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 20][..], b"\x00\x01c"].concat();
    let packet = [&[0x10, body.len() as u8][..], &body].concat();
    refused_with(&rig, &packet, &[0x20, 3, 0, 0x81, 0]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_as_the_first_packet_is_closed() {
    let rig = rig(|_| {}).await;
    refused_with(&rig, &packet::publish_qos0(4, "devices/device-42/x", b"sneaky"), &[]).await;
}

/// An upstream whose first connection is handed to `first`; every later one is forwarded to the real
/// broker, so good clients keep working through the same proxy.
async fn first_connection_misbehaves<F, Fut>(broker_port: u16, first: F) -> Upstream
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let Ok((s, _)) = listener.accept().await else { return };
        tokio::spawn(first(s));
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut broker) = TcpStream::connect(("127.0.0.1", broker_port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut broker).await;
                }
            });
        }
    });
    Upstream::Tcp { host: "127.0.0.1".into(), port }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_resetting_mid_stream_closes_only_that_client() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let upstream = first_connection_misbehaves(broker.port, |mut s| async move {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(&[0x20, 2, 0, 0]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // RST instead of FIN.
        let _ = s.set_zero_linger();
        drop(s);
    })
    .await;
    let proxy = Mqtls::start(pki.config(upstream)).await;
    let device = pki.ca.client("device-42");
    let mut victim = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    victim.write_all(&packet::connect(4, "victim", None, None)).await.expect("write");
    assert_eq!(read_exact_within(&mut victim, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    let rest = read_to_close(&mut victim).await;
    assert!(rest.is_empty(), "closed after the reset");
    good_client_round_trips(&pki, &broker, proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_that_accepts_but_never_answers_gets_the_client_connack_server_unavailable() {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let upstream = first_connection_misbehaves(broker.port, |s| async move {
        // Holds the connection, says nothing.
        tokio::time::sleep(WAIT).await;
        drop(s);
    })
    .await;
    let mut config = pki.config(upstream);
    config.global.limits.connack_timeout = Duration::from_millis(500);
    let proxy = Mqtls::start(config).await;
    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(proxy.port(), client_tls(&pki, Some(&device))).await.expect("tls");
    tls.write_all(&packet::connect(5, "waiting", None, None)).await.expect("write");
    let started = Instant::now();
    assert_eq!(read_to_close(&mut tls).await, [0x20, 3, 0, 0x88, 0]);
    // At the 500 ms connack deadline, not the 10 s default (the margin is for a slow machine).
    assert!(started.elapsed() < Duration::from_secs(5), "answered after {:?}", started.elapsed());
    good_client_round_trips(&pki, &broker, proxy.port()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_handshakes_that_never_complete_cost_bounded_memory_and_block_no_one() {
    const FLOOD: usize = 2000;
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mqtls = Binary::start(
        &pki,
        &format!("127.0.0.1:{}", broker.port),
        &["--handshake-timeout", "3s", "--log-level", "warn,mqtls::conn::handle=error"],
    );
    let before = mqtls.rss_kib();
    // Each sends a TLS record header announcing a ClientHello, and nothing more.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut s = TcpStream::connect(("127.0.0.1", mqtls.port)).await.expect("connect");
        s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).await.expect("write");
        flood.push(s);
    }
    good_client_round_trips(&pki, &broker, mqtls.port).await;
    let during = mqtls.rss_kib();
    eprintln!("RSS {before} KiB idle, {during} KiB with {FLOOD} stalled handshakes");
    assert!(during < before + 64 * 1024, "RSS grew from {before} KiB to {during} KiB for {FLOOD} stalled handshakes");

    // Every one of them is closed at the handshake deadline.
    let started = Instant::now();
    for s in &mut flood {
        let mut buf = [0u8; 64];
        let remaining = (WAIT + Duration::from_secs(3)).saturating_sub(started.elapsed());
        let r = tokio::time::timeout(remaining, s.read(&mut buf)).await.expect("closed by the deadline");
        assert!(matches!(r, Ok(0) | Err(_)), "expected close, got {r:?}");
    }
    // The default deadline is 10 s from each accept, and every accept was before `started`.
    assert!(started.elapsed() < Duration::from_secs(8), "closed at the 3 s deadline");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_while_the_broker_sends_a_lot_costs_bounded_memory() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0u64);
    let upstream = first_connection_misbehaves(broker.port, move |mut s| async move {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(&[0x20, 2, 0, 0]).await;
        // A PUBLISH header announcing 64 MiB, then its body, as fast as the proxy takes it.
        let _ = s.write_all(&[0x30, 0x80, 0x80, 0x80, 0x20, 0, 1, b't']).await;
        let chunk = vec![0x55u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < 64 * 1024 * 1024 {
            match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                _ => break,
            }
            let _ = sent_tx.send(sent);
        }
        tokio::time::sleep(WAIT).await;
    })
    .await;
    let Upstream::Tcp { port: up_port, .. } = upstream else { unreachable!() };
    let mqtls = Binary::start(&pki, &format!("127.0.0.1:{up_port}"), &[]);
    let before = mqtls.rss_kib();

    let device = pki.ca.client("device-42");
    let mut tls = tls_connect(mqtls.port, client_tls(&pki, Some(&device))).await.expect("tls");
    tls.write_all(&packet::connect(4, "sleepy", None, None)).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    // ...and now the client reads nothing more. Wait until the broker side stalls too: no progress
    // for half a second (one quiet sample could be the writer merely not being scheduled).
    let (mut last, mut quiet) = (0, 0);
    for _ in 0..150 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = *sent_rx.borrow_and_update();
        quiet = if now == last && now > 0 { quiet + 1 } else { 0 };
        if quiet == 5 {
            break;
        }
        last = now;
    }
    assert_eq!(quiet, 5, "the broker's writes never stalled (sent {last} bytes)");
    let stalled_at = *sent_rx.borrow();
    assert!(stalled_at < 64 * 1024 * 1024, "the broker's writes are held back, not buffered without bound");
    let during = mqtls.rss_kib();
    eprintln!("RSS {before} KiB idle, {during} KiB with the client stalled after {stalled_at} bytes");
    assert!(during < before + 16 * 1024, "RSS grew from {before} KiB to {during} KiB while the client stalled");
    good_client_round_trips(&pki, &broker, mqtls.port).await;
    drop(tls);
}

/// A valid 3.1.1 CONNECT of `remaining` bytes (≥ 240,010): every field but the password near its 64 KiB
/// limit, the password filling the rest.
fn large_connect(remaining: usize) -> Vec<u8> {
    const FIELD: usize = 60_000;
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC6, 0, 30];
    for byte in [b'c', b't', 0x55, b'u'] {
        body.extend_from_slice(&(FIELD as u16).to_be_bytes());
        body.extend(std::iter::repeat(byte).take(FIELD));
    }
    let password = remaining - body.len() - 2;
    body.extend_from_slice(&(password as u16).to_be_bytes());
    body.extend(std::iter::repeat(b'p').take(password));
    let mut packet = vec![0x10, 0x80 | (remaining & 0x7f) as u8, 0x80 | ((remaining >> 7) & 0x7f) as u8];
    packet.push((remaining >> 14) as u8);
    packet.extend(body);
    packet
}

/// mqtls' RSS once it stops changing (4 samples 250 ms apart within 256 KiB), or after 15 s.
async fn settled_rss(mqtls: &Binary) -> u64 {
    let mut samples = vec![mqtls.rss_kib()];
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(mqtls.rss_kib());
        if let [.., a, b, c, d] = samples[..] {
            if a.max(b).max(c).max(d) - a.min(b).min(c).min(d) < 256 {
                break;
            }
        }
    }
    *samples.last().expect("a sample")
}

/// `clients` connections that each complete TLS (no certificate: `client_auth = "optional"`), then
/// send all but the last KiB of a valid CONNECT just under the 256 KiB cap, a chunk at a time, and
/// never finish it. Returns mqtls' RSS growth in KiB while they hold, and how many were refused with
/// CONNACK "server unavailable" (3.1.1's code for "server busy"). A good device round-trips meanwhile.
async fn unfinished_connects(mqtls: &Binary, pki: &Pki, broker: &Mosquitto, clients: usize) -> (u64, usize) {
    const CHUNK: usize = 16 * 1024;
    let connect = std::sync::Arc::new(large_connect(255 * 1024));
    let before = mqtls.rss_kib();
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let config = client_tls(pki, None);
        let (port, connect) = (mqtls.port, connect.clone());
        tasks.push(tokio::spawn(async move {
            let mut tls = tls_connect(port, config).await.expect("tls");
            for chunk in connect[..connect.len() - 1024].chunks(CHUNK) {
                if tls.write_all(chunk).await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut answer = [0u8; 4];
            let refused = matches!(
                tokio::time::timeout(Duration::from_secs(3), tls.read_exact(&mut answer)).await,
                Ok(Ok(_)) if answer == [0x20, 2, 0, 3]
            );
            (refused, tls)
        }));
    }
    let mut held = Vec::with_capacity(clients);
    for task in tasks {
        held.push(task.await.expect("client task"));
    }
    let during = settled_rss(mqtls).await;
    good_client_round_trips(pki, broker, mqtls.port).await;
    let refused = held.iter().filter(|(refused, _)| *refused).count();
    (during.saturating_sub(before), refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_connects_are_held_within_the_memory_budget_and_a_good_device_still_connects() {
    const CLIENTS: usize = 400;
    const BUDGET_MIB: u64 = 8;
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let upstream = format!("127.0.0.1:{}", broker.port);
    let quiet = ["--client-auth", "optional", "--connect-timeout", "60s", "--log-level", "error"];
    let run = |budget: u64| {
        let admin = free_port();
        let mut args: Vec<String> = quiet.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--connect-buffer-budget".into(),
            budget.to_string(),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (Binary::start(&pki, &upstream, &args), admin)
    };

    let (mqtls, admin) = run(BUDGET_MIB * 1024 * 1024);
    let (grown, refused) = unfinished_connects(&mqtls, &pki, &broker, CLIENTS).await;
    let (_, metrics) = http_get(([127, 0, 0, 1], admin).into(), "/metrics").await;
    drop(mqtls);
    // Without a budget (one large enough for all of them) the same clients pin ~100 MiB: the bound
    // below is only meaningful if that run exceeds it.
    let (unbounded, _) = run(1 << 30);
    let (grown_without, refused_without) = unfinished_connects(&unbounded, &pki, &broker, CLIENTS).await;
    drop(unbounded);
    eprintln!(
        "RSS growth with {CLIENTS} unfinished CONNECTs: {grown} KiB with a {BUDGET_MIB} MiB budget ({refused} refused), \
         {grown_without} KiB without ({refused_without} refused)"
    );
    let bound = 40 * 1024;
    assert!(grown < bound, "RSS grew {grown} KiB with the budget");
    assert!(grown_without > bound, "without the budget the flood should exceed the bound ({grown_without} KiB)");
    assert_eq!(refused_without, 0);
    // 8 MiB holds ~32 CONNECTs of 250 KiB: the rest are refused, and counted.
    assert!(refused > CLIENTS / 2, "only {refused} of {CLIENTS} refused");
    let counted = sample(&metrics, r#"mqtls_connect_refusals_total{reason="memory_budget"}"#);
    assert_eq!(counted, refused as f64, "memory_budget refusals in\n{metrics}");
}
