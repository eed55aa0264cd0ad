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

#[tokio::test(flavor = "multi_thread")]
async fn busy_poll_spins_while_traffic_moves_and_sleeps_when_it_stops() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let upstream = broker.upstream().to_string();
    let mqtls = Binary::start(&pki, free_port(), &upstream, &["--busy-poll", "10ms", "--threads", "1"]);
    mqtls.wait_for_log("busy polling after traffic");

    let device = pki.ca.client("device-7");
    let mut tls = tls_connect(mqtls.port, client_tls(&pki, Some(&device))).await.expect("tls");
    let mut burst = packet::connect(4, "spinner", None, None);
    burst.extend(packet::subscribe(4, 1, "devices/device-7/d", 0));
    tls.write_all(&burst).await.expect("write");
    assert_eq!(read_exact_within(&mut tls, 4).await.expect("connack"), [0x20, 2, 0, 0]);
    assert_eq!(read_exact_within(&mut tls, 5).await.expect("suback"), [0x90, 3, 0, 1, 0]);

    // Traffic every 2 ms for one second (each gap inside the 10 ms window): messages flow, and the
    // process keeps polling in between instead of sleeping.
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
    let busy = cpu_time(mqtls.pid()) - before;
    let traffic = started.elapsed();

    // No traffic: after the window the process sleeps, using next to no CPU.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_time(mqtls.pid());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cpu_time(mqtls.pid()) - before;

    // Without busy polling these few hundred messages take a few milliseconds of CPU; spinning
    // between them takes a large share of the second (how large depends on the machine's load).
    assert!(busy >= Duration::from_millis(200), "spun {busy:?} of {traffic:?} of traffic");
    assert!(idle <= Duration::from_millis(100), "used {idle:?} of CPU in an idle second");
    tls.write_all(&packet::PINGREQ).await.expect("ping");
    assert_eq!(read_exact_within(&mut tls, 2).await.expect("pingresp"), [0xD0, 0]);
}
