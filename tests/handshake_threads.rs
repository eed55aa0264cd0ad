//! `handshake_nice`: the accept loops, TLS handshakes and everything before the splice run on threads
//! of their own at a lower priority, and each connection moves to the main threads for its splice;
//! `0` keeps everything on the main threads.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;

/// The name and nice value of each thread of `pid`, from /proc.
fn threads(pid: u32) -> Vec<(String, i64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc task");
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // After the command: state (field 3) ... nice is field 19.
        let nice = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(16)?.parse().ok());
        if let Some(nice) = nice {
            out.push((comm.trim().to_string(), nice));
        }
    }
    out
}

/// The process's sockets (descriptor → inode) and its epoll instances (descriptor → the descriptors
/// each watches), from /proc.
fn sockets_and_epolls(pid: u32) -> (HashMap<u32, u64>, HashMap<u32, HashSet<u32>>) {
    let (mut sockets, mut epolls) = (HashMap::new(), HashMap::new());
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc fd").flatten() {
        let Ok(n) = fd.file_name().to_string_lossy().parse::<u32>() else { continue };
        let target = std::fs::read_link(fd.path()).map(|t| t.display().to_string()).unwrap_or_default();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
            sockets.insert(n, inode.parse().expect("inode"));
        } else if target == "anon_inode:[eventpoll]" {
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{n}")).unwrap_or_default();
            let watched =
                info.lines().filter_map(|l| l.strip_prefix("tfd:")?.split_whitespace().next()?.parse().ok()).collect();
            epolls.insert(n, watched);
        }
    }
    (sockets, epolls)
}

/// Inodes of the TCP sockets /proc/net/tcp lists on 127.0.0.1: the one listening on `port`, and
/// the established ones with `port` or `broker` at either end.
fn tcp_inodes(port: u16, broker: u16) -> (u64, Vec<u64>) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let (ours, theirs) = (format!("0100007F:{port:04X}"), format!("0100007F:{broker:04X}"));
    let (mut listening, mut established) = (None, Vec::new());
    for f in table.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()) {
        let (Some(local), Some(remote), Some(state), Some(inode)) = (f.get(1), f.get(2), f.get(3), f.get(9)) else {
            continue;
        };
        let inode: u64 = inode.parse().expect("inode");
        match *state {
            "0A" if *local == ours => listening = Some(inode),
            // Our side of each: the device's connection to mqtls, mqtls's to the broker.
            "01" if *local == ours || *remote == theirs => established.push(inode),
            _ => {}
        }
    }
    (listening.unwrap_or_else(|| panic!("nothing listens on 127.0.0.1:{port}")), established)
}

/// The event loops watching a socket with `inode`, each named by what it watches (tokio holds each
/// epoll instance under two descriptors, which watch the same).
fn watchers(inode: u64, sockets: &HashMap<u32, u64>, epolls: &HashMap<u32, HashSet<u32>>) -> HashSet<Vec<u32>> {
    let fds: Vec<u32> = sockets.iter().filter(|(_, i)| **i == inode).map(|(fd, _)| *fd).collect();
    let named = |w: &HashSet<u32>| {
        let mut w: Vec<u32> = w.iter().copied().collect();
        w.sort_unstable();
        w
    };
    epolls.values().filter(|w| fds.iter().any(|fd| w.contains(fd))).map(named).collect()
}

/// A device connected through mqtls (started with `flags`) to a real Mosquitto, after a round trip.
struct Through {
    broker: Mosquitto,
    mqtls: Binary,
    _device: Device,
    _pki: Pki,
}

async fn device_through(flags: &[&str]) -> Through {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let mqtls = Binary::start(&pki, &broker.upstream().to_string(), flags);
    let leaf = pki.ca.client("device-1");
    let mut device = Device::connect(&pki, mqtls.port, "device-1", &leaf).await;
    device.round_trip(&broker, "through-mqtls").await;
    Through { broker, mqtls, _device: device, _pki: pki }
}

/// mqtls's end of the device's connection and of its broker connection (inodes), and of its listener.
fn our_sockets(t: &Through, sockets: &HashMap<u32, u64>) -> (u64, Vec<u64>) {
    let (listener, established) = tcp_inodes(t.mqtls.port, t.broker.port);
    let ours: Vec<u64> = established.into_iter().filter(|i| sockets.values().any(|s| s == i)).collect();
    assert_eq!(ours.len(), 2, "mqtls's established sockets: {ours:?} of {sockets:?}");
    (listener, ours)
}

#[tokio::test(flavor = "multi_thread")]
async fn handshakes_run_on_threads_of_their_own_at_the_configured_nice_value() {
    let t = device_through(&["--threads", "2", "--handshake-nice", "17"]).await;
    let mqtls = &t.mqtls;

    let threads = threads(mqtls.pid());
    let handshake: Vec<i64> = threads.iter().filter(|(n, _)| n == "mqtls-handshake").map(|t| t.1).collect();
    assert_eq!(handshake, [17, 17], "threads (name, nice): {threads:?}");
    let main_nice = threads.first().expect("main thread").1;
    assert!(
        threads.iter().filter(|(n, _)| n != "mqtls-handshake").all(|t| t.1 == main_nice),
        "only the handshake threads are lowered: {threads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_established_connection_is_watched_by_the_main_threads_not_the_handshake_threads() {
    let t = device_through(&["--threads", "1"]).await;
    let (sockets, epolls) = sockets_and_epolls(t.mqtls.pid());
    let (listener, ours) = our_sockets(&t, &sockets);
    let handshake_loop = watchers(listener, &sockets, &epolls);
    assert_eq!(handshake_loop.len(), 1, "the listener is watched by one event loop: {epolls:?}");
    for inode in ours {
        let loops = watchers(inode, &sockets, &epolls);
        assert_eq!(loops.len(), 1, "socket {inode} is watched by one event loop: {epolls:?}");
        assert!(loops.is_disjoint(&handshake_loop), "socket {inode} is still on the handshake threads' loop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_handshake_nice_0_handshakes_share_the_established_connections_threads() {
    let t = device_through(&["--threads", "1", "--handshake-nice", "0"]).await;
    let threads = threads(t.mqtls.pid());
    assert!(threads.iter().all(|(n, _)| n != "mqtls-handshake"), "threads: {threads:?}");
    let (sockets, epolls) = sockets_and_epolls(t.mqtls.pid());
    let (listener, ours) = our_sockets(&t, &sockets);
    let shared = watchers(listener, &sockets, &epolls);
    for inode in ours {
        assert_eq!(watchers(inode, &sockets, &epolls), shared, "socket {inode} shares the listener's loop: {epolls:?}");
    }
}
