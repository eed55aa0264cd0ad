//! `busy_poll`: traffic flows as without it; the process spins while traffic moves and sleeps again
//! once it stops. Alone in its test binary, so that no other test's work shares the CPU it measures.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

/// CPU time (user + system) the process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    // After the command: state, ppid, pgrp, session, tty, tpgid, flags, minflt, cminflt, majflt,
    // cmajflt, utime, stime (in clock ticks of 10 ms: USER_HZ is 100 on Linux).
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// One second of paced traffic through `mqtls` to the broker and back (a PUBLISH every 2 ms, each
/// gap inside a 10 ms window); returns the CPU the process used meanwhile and the wall time.
async fn paced_traffic(pki: &Pki, mqtls: &Binary, client_id: &str) -> (Duration, Duration) {
    let device = pki.ca.client("device-7");
    let mut tls = tls_connect(mqtls.port, client_tls(pki, Some(&device))).await.expect("tls");
    let mut burst = packet::connect(4, client_id, None, None);
    burst.extend(packet::subscribe(4, 1, "devices/device-7/d", 0));
    tls.write_all(&burst).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(read_exact_within(&mut tls, 5).await.expect("suback"), [0x90, 3, 0, 1, 0]);
    let before = cpu_time(mqtls.pid());
    let started = Instant::now();
    for i in 0..500u32 {
        if started.elapsed() > Duration::from_secs(1) {
            break;
        }
        let publish = packet::publish_qos0(4, "devices/device-7/d", &i.to_be_bytes());
        tls.write_all(&publish).await.expect("publish");
        assert_eq!(read_exact_within(&mut tls, publish.len()).await.expect("echo"), publish);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let used = cpu_time(mqtls.pid()) - before;
    let traffic = started.elapsed();
    tls.write_all(&packet::PINGREQ).await.expect("ping");
    assert_eq!(read_exact_within(&mut tls, 2).await.expect("pingresp"), [0xD0, 0]);
    (used, traffic)
}

#[tokio::test(flavor = "multi_thread")]
async fn busy_poll_spins_while_traffic_moves_and_sleeps_when_it_stops() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let upstream = broker.upstream().to_string();
    // The same traffic through mqtls without busy polling: what the messages themselves cost.
    let baseline = {
        let plain = Binary::start(&pki, &upstream, &["--threads", "1"]);
        paced_traffic(&pki, &plain, "baseline").await.0
    };
    let mqtls = Binary::start(&pki, &upstream, &["--busy-poll", "10ms", "--threads", "1"]);
    mqtls.wait_for_log("busy polling after traffic");
    let (busy, traffic) = paced_traffic(&pki, &mqtls, "spinner").await;

    // No traffic: after the window the process sleeps, using next to no CPU.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_time(mqtls.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cpu_time(mqtls.pid()) - before;

    eprintln!("CPU over {traffic:?} of traffic: {baseline:?} without busy polling, {busy:?} with; {idle:?} idle");
    // Spinning between the messages takes a large share of the second (how large depends on the
    // machine's load); the messages alone take a few per cent.
    assert!(busy >= baseline * 2 + Duration::from_millis(100), "spun {busy:?} (without: {baseline:?})");
    assert!(idle <= Duration::from_millis(100), "used {idle:?} of CPU in an idle second");
}
