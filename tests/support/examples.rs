//! Shared by the tests of the deployment examples (`examples.rs`, `kubernetes_secret_layout.rs`): paths
//! into the repository, the content of a ConfigMap key from a manifest, and the mqtls binary run as a pod
//! or a unit would run it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A file of this repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text of `key` in a manifest's ConfigMap `data`, written as a YAML literal block (`key: |`), with
/// the block's indentation removed. The schema test (tests/validate_kubernetes.py) parses the same files
/// with a real YAML parser; this keeps the Rust tests free of one.
pub fn configmap_file(manifest: &str, key: &str) -> String {
    let header = format!("{key}: |");
    let mut lines = manifest.lines().skip_while(|l| l.trim() != header);
    let head = lines.next().unwrap_or_else(|| panic!("no `{header}` block in the manifest"));
    let key_indent = head.len() - head.trim_start().len();
    let body: Vec<&str> =
        lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent).collect();
    let indent = body.iter().find(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).unwrap_or(0);
    let mut text: String = body.iter().map(|l| format!("{}\n", l.get(indent..).unwrap_or(""))).collect();
    while text.ends_with("\n\n") {
        text.pop();
    }
    text
}

/// A plain HTTP/1.0 GET, as a kubelet probe makes it; returns the status code.
pub async fn probe(port: u16, path: &str) -> u16 {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(10), get).await.ok().flatten().unwrap_or(0)
}
