//! systemd socket activation with the real tool: `systemd-socket-activate` (Debian `systemd`) holds the
//! listening socket and, at the first connection, starts mqtls with it in `LISTEN_FDS`; mqtls serves it
//! on the listener whose `listen` is its address. A listener without a passed socket binds its own; a
//! passed socket that no listener names stops mqtls with a configuration error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// `systemd-socket-activate -l LISTEN -- mqtls --config CONFIG`, its output (the tool's, then mqtls')
/// in a file; killed when dropped.
struct Activated {
    child: Child,
    log: PathBuf,
}

impl Activated {
    /// Starts the tool and waits until it holds the socket (mqtls starts at the first connection).
    fn start(listen: &str, config: &Path, dir: &Path) -> Activated {
        let tool = require_tool("systemd-socket-activate", "systemd");
        let log = dir.join("activated.log");
        let child = Command::new(tool)
            .args(["-l", listen, "--"])
            .arg(env!("CARGO_BIN_EXE_mqtls"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn systemd-socket-activate");
        let activated = Activated { child, log };
        activated.wait_for_log(&format!("Listening on {listen}"));
        activated
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(Instant::now() < deadline, "never logged {needle:?}:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process (mqtls, once the tool has exec'd it) to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sigterm(&self) {
        let out = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).output().expect("kill");
        assert!(out.status.success(), "kill -TERM: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration file with `listeners` (name, address) as `[[listener]]` blocks in front of `broker`.
fn config_file(pki: &Pki, broker: &Mosquitto, listeners: &[(&str, String)]) -> PathBuf {
    let mut text = format!(
        "log_format = \"json\"\ndrain_timeout = \"2s\"\nupstream = \"127.0.0.1:{}\"\ncert = {:?}\nkey = {:?}\n\
         client_ca = {:?}\n",
        broker.port, pki.server_cert, pki.server_key, pki.ca_file
    );
    for (name, listen) in listeners {
        text.push_str(&format!("\n[[listener]]\nname = \"{name}\"\nlisten = \"{listen}\"\n"));
    }
    let path = pki.path("mqtls.toml");
    write_file(&path, &text);
    path
}

/// `device-42` publishes at QoS 1 through `port`, and the broker gets the message.
async fn publish_through(pki: &Pki, broker: &Mosquitto, port: u16, payload: &str) {
    let mut monitor = Monitor::start(broker, "devices/device-42/#").await;
    let (cert, key) = pki.ca.client("device-42").write(pki.dir.path(), "device-42");
    let mut args = mosquitto_tls_args(pki, port, Some((&cert, &key)));
    args.extend(["-q", "1", "-t", "devices/device-42/up", "-m", payload].map(String::from));
    let (ok, _, err) = run_tool("mosquitto_pub", &args).await;
    assert!(ok, "mosquitto_pub through port {port}: {err}");
    assert_eq!(monitor.next().await, ("devices/device-42/up".to_string(), payload.as_bytes().to_vec()));
}

#[tokio::test]
async fn mqtls_serves_the_socket_systemd_passes() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let listen = format!("127.0.0.1:{}", free_port());
    let config = config_file(&pki, &broker, &[("activated", listen.clone())]);
    let activated = Activated::start(&listen, &config, pki.dir.path());
    let port = listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    // The first connection waits in the socket's queue while mqtls starts, then is served.
    publish_through(&pki, &broker, port, "activated").await;
    activated.wait_for_log("serving the socket systemd passed");
    let mut activated = activated;
    activated.sigterm();
    assert_eq!(activated.wait_exit(), Some(0), "{}", activated.log());
}

#[tokio::test]
async fn a_listener_without_a_passed_socket_binds_its_own() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let (passed, own) = (free_port(), free_port());
    let config = config_file(
        &pki,
        &broker,
        &[("activated", format!("127.0.0.1:{passed}")), ("bound", format!("127.0.0.1:{own}"))],
    );
    let _activated = Activated::start(&format!("127.0.0.1:{passed}"), &config, pki.dir.path());
    publish_through(&pki, &broker, passed, "through the passed socket").await;
    publish_through(&pki, &broker, own, "through the socket mqtls bound").await;
}

#[tokio::test]
async fn a_passed_socket_that_no_listener_names_stops_mqtls_with_a_configuration_error() {
    let pki = Pki::new();
    let broker = Mosquitto::start();
    let (passed, configured) = (free_port(), free_port());
    let config = config_file(&pki, &broker, &[("other", format!("127.0.0.1:{configured}"))]);
    let mut activated = Activated::start(&format!("127.0.0.1:{passed}"), &config, pki.dir.path());
    // The tool starts mqtls at the first connection.
    let _first = std::net::TcpStream::connect(("127.0.0.1", passed)).expect("connect");
    assert_eq!(activated.wait_exit(), Some(2), "{}", activated.log());
    let expected = format!("listen (in {}): no listener listens on 127.0.0.1:{passed}", config.display());
    assert!(activated.log().contains(&expected), "expected {expected:?} in:\n{}", activated.log());
}
