//! Upgrading without a refused device: a second mqtls binds the port of the first (`reuse_port`), the
//! first gets SIGTERM and hands the port over, while client loops (`mosquitto_pub`: connect, publish at
//! QoS 1, disconnect) run through both; a device connected to the first before the swap still gets a
//! message published after the second took over.
//!
//! `measure_failed_connections_during_an_upgrade` (ignored: `cargo test --test upgrade -- --ignored
//! --nocapture`) runs the same swap with and without `reuse_port`, with `mosquitto_pub` and with a faster
//! Rust client, and prints how many connections failed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// At most this many publishes per client loop; the swap stops the loops well before.
const MAX_PUBLISHES: usize = 2_000;
/// At most this long per client loop.
const LOOP_LIMIT: Duration = Duration::from_secs(90);
/// Publishes each phase of the swap waits for (before B, with A and B, after A closed its socket).
const PER_PHASE: usize = 20;
/// The old process's drain: long enough for the device connected to it to get its message.
const DRAIN: &str = "20s";

/// What each iteration of a client loop is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    /// A fresh `mosquitto_pub`: TCP, TLS with a client certificate, CONNECT, PUBLISH at QoS 1 answered
    /// by the broker's PUBACK, DISCONNECT.
    MosquittoPub,
    /// A Rust TLS client with a client certificate: CONNECT, CONNACK, DISCONNECT. Many more per second
    /// than a process each, for the measurement.
    Session,
}

/// Client loops connecting through mqtls until stopped, each iteration a new connection.
struct Loops {
    done: Arc<AtomicUsize>,
    /// Each failed iteration: when, and what the client said.
    failures: Arc<Mutex<Vec<(Instant, String)>>>,
    /// The longest iteration that succeeded.
    slowest: Arc<Mutex<Duration>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Loops {
    fn start(pki: &Pki, port: u16, client: Client, loops: usize) -> Loops {
        require_tool("mosquitto_pub", "mosquitto-clients");
        let leaf = pki.ca.client("looper");
        let (cert, key) = leaf.write(pki.dir.path(), "looper");
        let base = mosquitto_tls_args(pki, port, Some((&cert, &key)));
        let tls = client_tls(pki, Some(&leaf));
        let (done, failures, slowest, stop) = Default::default();
        let mut all = Loops { done, failures, slowest, stop, started: Instant::now(), tasks: Vec::new() };
        for n in 0..loops {
            let (done, failures, stop) = (all.done.clone(), all.failures.clone(), all.stop.clone());
            let (slowest, tls) = (all.slowest.clone(), tls.clone());
            let id = format!("looper-{n}");
            let mut args = base.clone();
            args.extend(["-q", "1", "-i", &id, "-t", "devices/looper/x", "-m", "x"].map(String::from));
            all.tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                for _ in 0..MAX_PUBLISHES {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > LOOP_LIMIT {
                        return;
                    }
                    let attempt = Instant::now();
                    let result = match client {
                        Client::MosquittoPub => mosquitto_pub(&args).await,
                        Client::Session => session(port, tls.clone(), &id).await.map_err(|e| e.to_string()),
                    };
                    match result {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            let mut slowest = slowest.lock().expect("lock");
                            *slowest = (*slowest).max(attempt.elapsed());
                        }
                        Err(err) => failures.lock().expect("lock").push((Instant::now(), err)),
                    }
                }
            }));
        }
        all
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Waits until `more` publishes have succeeded from now.
    async fn wait_for(&self, more: usize, what: &str) {
        let target = self.done() + more;
        let deadline = Instant::now() + LOOP_LIMIT;
        while self.done() < target {
            assert!(Instant::now() < deadline, "{what}: the client loops made {} of {target} publishes", self.done());
            assert!(self.tasks.iter().any(|t| !t.is_finished()), "{what}: the client loops ended early");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the loops; what they saw.
    async fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("client loop");
        }
        let failures = self.failures.lock().expect("lock").clone();
        let slowest = *self.slowest.lock().expect("lock");
        Outcome { published: self.done.load(Ordering::Relaxed), failures, slowest, ran: self.started.elapsed() }
    }
}

/// What the client loops saw.
struct Outcome {
    published: usize,
    failures: Vec<(Instant, String)>,
    slowest: Duration,
    ran: Duration,
}

impl Outcome {
    /// The failures by message, e.g. `; 41 × "Error: Connection refused"`.
    fn kinds(&self) -> String {
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for (_, message) in &self.failures {
            *kinds.entry(message.as_str()).or_default() += 1;
        }
        kinds.iter().map(|(message, n)| format!("; {n} × {message:?}")).collect()
    }

    /// From the first failed publish to the last.
    fn failing_for(&self) -> Duration {
        match (self.failures.first(), self.failures.last()) {
            (Some((first, _)), Some((last, _))) => last.duration_since(*first),
            _ => Duration::ZERO,
        }
    }
}

/// One `mosquitto_pub ARGS`, within WAIT: a publish that takes longer counts as failed.
async fn mosquitto_pub(args: &[String]) -> Result<(), String> {
    let child = tokio::process::Command::new("mosquitto_pub")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("mosquitto_pub: {e}"))?;
    match tokio::time::timeout(WAIT, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no PUBACK within {WAIT:?}")),
    }
}

/// CONNECT as `id`, CONNACK "accepted", DISCONNECT, over a new TLS connection; within WAIT.
async fn session(port: u16, tls: Arc<rustls::ClientConfig>, id: &str) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    session_over(tcp, tls, id).await
}

/// [`session`] over a TCP connection already made.
async fn session_over(tcp: tokio::net::TcpStream, tls: Arc<rustls::ClientConfig>, id: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let exchange = async {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
        tls.write_all(&packet::connect(4, id, None, None)).await?;
        let ack = read_exact_within(&mut tls, 4).await?;
        if ack != [0x20, 2, 0, 0] {
            return Err(std::io::Error::other(format!("CONNACK {ack:?}")));
        }
        tls.write_all(&packet::DISCONNECT).await?;
        read_to_close(&mut tls).await;
        Ok(())
    };
    tokio::time::timeout(WAIT, exchange).await.map_err(|_| std::io::Error::other("no CONNACK within WAIT"))?
}

/// mqtls (the binary) on `port` in front of `broker`, each with its own log.
fn start_mqtls(pki: &Pki, broker: &Mosquitto, port: u16, reuse_port: bool) -> (Binary, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args: Vec<String> = vec!["--listen".into(), format!("127.0.0.1:{port}")];
    args.extend(["--upstream".into(), format!("127.0.0.1:{}", broker.port)]);
    for (flag, path) in [("--cert", &pki.server_cert), ("--key", &pki.server_key), ("--client-ca", &pki.ca_file)] {
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    args.extend(["--log-format", "json", "--drain-timeout", DRAIN].map(String::from));
    if reuse_port {
        args.push("--reuse-port".into());
    }
    (Binary::spawn(&args, dir.path(), port), dir)
}

/// Waits (without blocking the runtime) until `mqtls` logs `needle`; panics with its log if it exits
/// first or after WAIT.
async fn wait_log(mqtls: &mut Binary, needle: &str) {
    let deadline = Instant::now() + WAIT;
    while !mqtls.log().contains(needle) {
        assert!(mqtls.running(), "mqtls exited before logging {needle:?}:\n{}", mqtls.log());
        assert!(Instant::now() < deadline, "mqtls never logged {needle:?}:\n{}", mqtls.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connections of the client loops a process spliced, from its log.
fn loop_connections(mqtls: &Binary) -> usize {
    mqtls.log().lines().filter(|l| l.contains("\"message\":\"open\"") && l.contains("looper")).count()
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`) to `mqtls`.
fn signal(mqtls: &Binary, signal: &str) {
    let (ok, err) =
        match std::process::Command::new("kill").args([&format!("-{signal}"), &mqtls.pid().to_string()]).output() {
            Ok(out) => (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()),
            Err(e) => (false, e.to_string()),
        };
    assert!(ok, "kill -{signal}: {err}");
}

/// What one swap from A to B saw.
struct Swap {
    clients: Outcome,
    through_a: usize,
    through_b: usize,
    /// From A's SIGTERM until B accepted (without reuse_port) or A closed its socket (with it).
    took: Duration,
}

/// A serves; client loops run; B takes over — with `reuse_port`, B starts beside A and then A gets
/// SIGTERM; without, A gets SIGTERM and B starts once A's socket is closed (the quickest restart there
/// is) — and the loops run on through B. A device connected to A before the swap gets a message
/// published after it; then it disconnects and A, drained, exits 0.
async fn swap(reuse_port: bool, client: Client, loops: usize) -> Swap {
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let port = free_port();
    let (mut a, _a_dir) = start_mqtls(&pki, &broker, port, reuse_port);
    wait_log(&mut a, "accepting connections").await;
    let device_cert = pki.ca.client("device-1");
    let mut device = Device::connect(&pki, port, "device-1", &device_cert).await;
    device.round_trip(&broker, "before the swap").await;

    let clients = Loops::start(&pki, port, client, loops);
    clients.wait_for(PER_PHASE, "A alone").await;
    let (mut b, _b_dir, took);
    if reuse_port {
        (b, _b_dir) = start_mqtls(&pki, &broker, port, true);
        wait_log(&mut b, "accepting connections").await;
        clients.wait_for(PER_PHASE, "A and B").await;
        let sent = Instant::now();
        signal(&a, "TERM");
        wait_log(&mut a, "listener closed").await;
        took = sent.elapsed();
    } else {
        let sent = Instant::now();
        signal(&a, "TERM");
        wait_log(&mut a, "listener closed").await;
        (b, _b_dir) = start_mqtls(&pki, &broker, port, false);
        wait_log(&mut b, "accepting connections").await;
        took = sent.elapsed();
    }
    clients.wait_for(PER_PHASE, "B after the swap").await;
    // A's established connection still carries messages after B took the port.
    device.round_trip(&broker, "after the swap").await;
    let clients = clients.finish().await;
    drop(device);
    let status = a.wait_exit(WAIT);
    assert!(status.success(), "A did not exit 0 after its drain ({status}):\n{}", a.log());
    assert!(b.running(), "B stopped:\n{}", b.log());
    Swap { clients, through_a: loop_connections(&a), through_b: loop_connections(&b), took }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_bound_with_reuse_port_hands_its_port_over_without_a_failed_connection() {
    let swap = swap(true, Client::MosquittoPub, 2).await;
    let failures = &swap.clients.failures;
    assert!(
        failures.is_empty(),
        "{} of {} publishes failed during the swap: {:?}",
        failures.len(),
        swap.clients.published + failures.len(),
        failures.iter().map(|(_, message)| message).collect::<Vec<_>>()
    );
    // Both processes served the loops: the swap happened while they ran.
    assert!(swap.through_a > 0 && swap.through_b > 0, "A spliced {}, B {}", swap.through_a, swap.through_b);
}

/// Connections the kernel completed and queued on the old process's socket, but that it had not
/// accepted when SIGTERM came: closing a `SO_REUSEPORT` socket would reset them. The old process is
/// frozen (SIGSTOP) while they connect, so its queue holds them all when it gets SIGTERM and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_on_the_old_socket_are_served_not_reset() {
    const QUEUED: usize = 16;
    init_logs();
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let port = free_port();
    let (mut old, _dir) = start_mqtls(&pki, &broker, port, true);
    wait_log(&mut old, "accepting connections").await;
    let tls = client_tls(&pki, Some(&pki.ca.client("queued")));
    signal(&old, "STOP");
    let connected = Arc::new(AtomicUsize::new(0));
    let sessions: Vec<_> = (0..QUEUED)
        .map(|n| {
            let (tls, connected) = (tls.clone(), connected.clone());
            tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                connected.fetch_add(1, Ordering::Relaxed);
                session_over(tcp, tls, &format!("queued-{n}")).await
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while connected.load(Ordering::Relaxed) < QUEUED {
        if Instant::now() > deadline {
            signal(&old, "CONT");
            panic!("{} of {QUEUED} TCP connections completed", connected.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every one is now in the frozen process's accept queue.
    signal(&old, "TERM");
    signal(&old, "CONT");
    let mut failures = Vec::new();
    for (n, session) in sessions.into_iter().enumerate() {
        if let Err(err) = session.await.expect("session task") {
            failures.push(format!("queued-{n}: {err}"));
        }
    }
    assert!(failures.is_empty(), "{} of {QUEUED} queued connections failed: {failures:?}", failures.len());
    assert!(old.wait_exit(WAIT).success(), "{}", old.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn measure_failed_connections_during_an_upgrade() {
    const ROUNDS: usize = 3;
    for (client, loops) in [(Client::MosquittoPub, 4), (Client::Session, 16)] {
        for reuse_port in [false, true] {
            for round in 1..=ROUNDS {
                let swap = swap(reuse_port, client, loops).await;
                let clients = &swap.clients;
                let attempts = clients.published + clients.failures.len();
                println!(
                    "{client:?} reuse_port={reuse_port} round {round}: {} of {attempts} failed, over {} ms ({loops} \
                     loops, {:.0}/s; slowest success {} ms; swap {} ms; A spliced {}, B {}){}",
                    clients.failures.len(),
                    clients.failing_for().as_millis(),
                    attempts as f64 / clients.ran.as_secs_f64(),
                    clients.slowest.as_millis(),
                    swap.took.as_millis(),
                    swap.through_a,
                    swap.through_b,
                    clients.kinds(),
                );
            }
        }
    }
}
