//! The Debian package: built with `cargo deb` (cargo-deb), installed on this machine with `dpkg -i`,
//! then checked as an operator would: the binary runs, the installed unit passes
//! `systemd-analyze verify`, the installed configuration passes `mqtls check` with the development
//! certificates, and `dpkg -r` / `dpkg --purge` leave only what the conffile rules say.
//!
//! These tests install and purge the package `mqtls` system-wide, so they need root (CI runs as root)
//! and fail, saying so, without it or without cargo-deb (`bash tests/run` installs it). The .deb is
//! built once per run of this file with `cargo deb --no-build` around the binary `cargo test` has just
//! built (a debug build: a release build would add minutes of the suite's time budget and test nothing
//! these tests look at; `cargo deb` without `--no-build` makes the release package); every test
//! installs it and purges it again, holding a lock file for that time so that two runs on one machine
//! (two worktrees, say) never install at once.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where systemd units of packages go (cargo-deb, like debhelper in Debian 13, uses /usr/lib).
const UNIT: &str = "/usr/lib/systemd/system/mqtls.service";
/// The socket-activation unit, installed beside it (not enabled).
const SOCKET: &str = "/usr/lib/systemd/system/mqtls.socket";
const CONFFILE: &str = "/etc/mqtls/mqtls.toml";
/// Where postinst notes that it created the group (so that purge removes only a group it made).
const GROUP_MARKER: &str = "/var/lib/mqtls/created-group";
/// Held while a test has the package installed; released by the kernel if the process dies.
const LOCK: &str = "/run/lock/mqtls-package-test.lock";
/// How long to wait for another run's install-to-purge, or for dpkg's own lock (an apt elsewhere).
const LOCK_WAIT: Duration = Duration::from_secs(300);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// The .deb, built once for every test of this file.
fn deb() -> &'static Path {
    static DEB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DEB.get_or_init(build_deb) {
        Ok(path) => path,
        Err(err) => panic!("{err}"),
    }
}

fn build_deb() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let version = run(Command::new(&cargo).args(["deb", "--version"]));
    if !version.status.success() {
        return Err(format!(
            "cargo-deb not found ({}): `bash tests/run` installs it, or `cargo install cargo-deb --locked`",
            text(&version).trim()
        ));
    }
    // Its own target directory: `cargo test` holds the lock on the one it builds in.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out_dir = tmp.join("deb-out");
    let _ = std::fs::remove_dir_all(&out_dir);
    // The package's asset `target/release/mqtls` is looked for in its target directory.
    let target = tmp.join("deb-target");
    let binary = target.join("release").join("mqtls");
    std::fs::create_dir_all(target.join("release")).map_err(|e| format!("{}: {e}", target.display()))?;
    std::fs::copy(env!("CARGO_BIN_EXE_mqtls"), &binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let started = Instant::now();
    let out = run(Command::new(&cargo)
        .args(["deb", "--no-build", "--locked", "--output"])
        .arg(&out_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target));
    if !out.status.success() {
        return Err(format!("cargo deb failed:\n{}", text(&out)));
    }
    eprintln!("cargo deb took {:?}", started.elapsed());
    let debs: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .map_err(|e| format!("{}: {e}", out_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!("expected one .deb in {}, found {debs:?}", out_dir.display())),
    }
}

fn require_root() {
    let id = run(Command::new("id").arg("-u"));
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "0",
        "these tests install the Debian package with dpkg: run them as root (CI does)"
    );
}

/// `dpkg ARGS`, retried while another dpkg or apt holds dpkg's lock; panics with the output on failure.
fn dpkg(args: &[&str]) -> String {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let out = run(Command::new("dpkg").args(args).env("DEBIAN_FRONTEND", "noninteractive"));
        let said = text(&out);
        if out.status.success() {
            return said;
        }
        assert!(said.contains("lock") && Instant::now() < deadline, "dpkg {}: {}", args.join(" "), said);
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `dpkg-query`'s status of the package: "install ok installed", "deinstall ok config-files", or ""
/// when dpkg has no record of it.
fn status() -> String {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "mqtls"]));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn group_exists() -> bool {
    run(Command::new("getent").args(["group", "mqtls"])).status.success()
}

/// The package installed for one test: the machine lock, then `dpkg -i`; purged when dropped (also
/// when the test fails), then the lock released.
struct Installed {
    /// The group existed before the install: the package must neither create nor remove it.
    group_before: bool,
    /// What `dpkg -L` listed while installed.
    files: Vec<PathBuf>,
    _lock: std::fs::File,
}

impl Installed {
    fn new() -> Installed {
        Self::with(|| {})
    }

    /// Like `new`, running `before` once the lock is held and before the install.
    fn with(before: impl FnOnce()) -> Installed {
        require_root();
        let deb = deb();
        let lock = machine_lock();
        assert_eq!(status(), "", "the package mqtls is already on this machine; these tests install and purge it: `dpkg --purge mqtls` first");
        assert!(
            !Path::new("/etc/mqtls").exists(),
            "/etc/mqtls exists (an install by hand?); these tests would purge the package over it: move it away first"
        );
        before();
        let group_before = group_exists();
        dpkg(&["-i", deb.to_str().expect("utf-8 path")]);
        assert_eq!(status(), "install ok installed");
        let files = dpkg(&["-L", "mqtls"]).lines().map(PathBuf::from).collect();
        Installed { group_before, files, _lock: lock }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(Command::new("dpkg").args(["--purge", "mqtls"]));
        // A package that fails to remove its group must fail one test, not every later one too. (A
        // group kept beside files left in /etc/mqtls is for the test that left them to look at.)
        if !self.group_before && group_exists() && !Path::new("/etc/mqtls").exists() {
            let _ = run(Command::new("groupdel").arg("mqtls"));
        }
    }
}

/// An exclusive lock on [`LOCK`], waited for at most [`LOCK_WAIT`].
fn machine_lock() -> std::fs::File {
    let _ = std::fs::create_dir_all(Path::new(LOCK).parent().unwrap_or(Path::new("/")));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .unwrap_or_else(|e| panic!("{LOCK}: {e}"));
    let deadline = Instant::now() + LOCK_WAIT;
    while rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(Instant::now() < deadline, "another run held {LOCK} for {LOCK_WAIT:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    file
}

#[test]
fn the_package_installs_the_binary_the_unit_a_conffile_and_the_group() {
    let installed = Installed::new();
    let version = run(Command::new("/usr/bin/mqtls").arg("--version"));
    assert!(version.status.success(), "{}", text(&version));
    assert_eq!(text(&version).trim(), format!("mqtls {}", env!("CARGO_PKG_VERSION")));
    let help = text(&run(Command::new("/usr/bin/mqtls").arg("--help")));
    assert!(help.contains("reload") && help.contains("Exit status"), "{help}");

    for path in
        ["/usr/bin/mqtls", UNIT, SOCKET, CONFFILE, "/usr/share/doc/mqtls/README.md", "/usr/share/doc/mqtls/copyright"]
    {
        assert!(installed.files.contains(&PathBuf::from(path)), "{path} not in the package: {:?}", installed.files);
    }
    // An upgrade keeps the operator's edits: the file is a conffile, and it is the example, commented.
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "mqtls"]));
    assert!(text(&conffiles).contains(CONFFILE), "conffiles: {}", text(&conffiles));
    let installed_conf = std::fs::read_to_string(CONFFILE).expect("conffile");
    assert_eq!(installed_conf, std::fs::read_to_string(repo("examples/mqtls.toml")).expect("example"));

    assert!(group_exists(), "postinst creates the system group mqtls");
    let gid: u32 = text(&run(Command::new("getent").args(["group", "mqtls"])))
        .split(':')
        .nth(2)
        .and_then(|g| g.parse().ok())
        .expect("getent group mqtls");
    let etc = std::fs::metadata("/etc/mqtls").expect("/etc/mqtls");
    assert_eq!(
        (etc.uid(), etc.gid(), etc.permissions().mode() & 0o7777),
        (0, gid, 0o750),
        "/etc/mqtls root:mqtls 0750"
    );
    assert!(!installed.group_before, "the group existed before the test; nothing checked about creating it");
}

#[test]
fn the_installed_units_pass_systemd_analyze_verify() {
    let _installed = Installed::new();
    let analyze = common::require_tool("systemd-analyze", "systemd");
    let out = run(Command::new(analyze).arg("verify").args([UNIT, SOCKET]));
    // verify exits 0 on an unknown key and only warns: any output is a failure here.
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify:\n{}", text(&out));
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    for line in [
        "ExecStart=/usr/bin/mqtls --config /etc/mqtls/mqtls.toml\n",
        "ExecReload=/usr/bin/mqtls reload --config /etc/mqtls/mqtls.toml\n",
        "RestartPreventExitStatus=2\n",
        "SupplementaryGroups=mqtls\n",
    ] {
        assert!(unit.contains(line), "the installed unit lacks {line:?}");
    }
}

#[test]
fn the_installed_configuration_passes_mqtls_check_with_the_dev_certificates() {
    let _installed = Installed::new();
    // Without certificates, the commented file names a file it lacks, as a configuration error.
    let out = run(Command::new("/usr/bin/mqtls").args(["check", "--config", CONFFILE]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot read /etc/mqtls/") && text(&out).contains(CONFFILE), "{}", text(&out));

    let certs = tempfile::tempdir().expect("tempdir");
    let gen = run(Command::new("bash").arg(repo("certs/gen.sh")).arg(certs.path()));
    assert!(gen.status.success(), "certs/gen.sh (needs openssl): {}", text(&gen));
    let file = |name: &str| certs.path().join(name).display().to_string();
    let out = run(Command::new("/usr/bin/mqtls").args([
        "check",
        "--config",
        CONFFILE,
        "--cert",
        &file("server.crt"),
        "--key",
        &file("server.key"),
        "--client-ca",
        &file("ca.crt"),
    ]));
    assert!(out.status.success(), "mqtls check: {}", text(&out));
    let said = text(&out);
    assert!(said.contains(&format!("# configuration OK ({CONFFILE})")), "{said}");
    assert!(said.contains("admin = \"127.0.0.1:9883\""), "the packaged file sets the admin address: {said}");
}

#[test]
fn remove_keeps_only_the_conffile_and_purge_leaves_nothing() {
    let installed = Installed::new();
    dpkg(&["-r", "mqtls"]);
    assert_eq!(status(), "deinstall ok config-files");
    assert!(Path::new(CONFFILE).exists(), "remove keeps the conffile");
    let left: Vec<&PathBuf> = installed.files.iter().filter(|p| p.is_file() && *p != Path::new(CONFFILE)).collect();
    assert!(left.is_empty(), "remove left files of the package: {left:?}");
    assert!(group_exists(), "remove keeps the group that may own the operator's files");

    dpkg(&["--purge", "mqtls"]);
    assert_eq!(status(), "", "dpkg still has a record of the package");
    // Every file, and every directory of the package's own (a path naming mqtls), is gone.
    let left: Vec<&PathBuf> = installed
        .files
        .iter()
        .filter(|p| p.is_file() || (p.is_dir() && p.to_string_lossy().contains("mqtls")))
        .collect();
    assert!(left.is_empty(), "purge left: {left:?}");
    for path in
        ["/etc/mqtls", GROUP_MARKER, "/var/lib/mqtls", "/etc/systemd/system/multi-user.target.wants/mqtls.service"]
    {
        assert!(!Path::new(path).exists(), "purge left {path}");
    }
    assert!(!group_exists(), "purge removes the group postinst created");
    let overrides = run(Command::new("dpkg-statoverride").args(["--list", "/etc/mqtls"]));
    assert!(!overrides.status.success(), "purge left the stat override: {}", text(&overrides));
    for dir in ["/var/lib/systemd/deb-systemd-helper-enabled", "/var/lib/systemd/deb-systemd-helper-masked"] {
        let named: Vec<PathBuf> =
            walk(Path::new(dir)).into_iter().filter(|p| p.to_string_lossy().contains("mqtls")).collect();
        assert!(named.is_empty(), "purge left systemd state: {named:?}");
    }
}

#[test]
fn purge_keeps_a_group_the_package_did_not_create() {
    let mut made = false;
    let installed = Installed::with(|| {
        if !group_exists() {
            let out = run(Command::new("groupadd").args(["--system", "mqtls"]));
            assert!(out.status.success(), "groupadd: {}", text(&out));
            made = true;
        }
    });
    assert!(installed.group_before);
    assert!(!Path::new(GROUP_MARKER).exists(), "postinst claims a group it found");
    drop(installed);
    assert_eq!(status(), "");
    assert!(group_exists(), "purge removed a group the package did not create");
    if made {
        let out = run(Command::new("groupdel").arg("mqtls"));
        assert!(out.status.success(), "groupdel: {}", text(&out));
    }
}

#[test]
fn purge_keeps_the_group_while_the_operators_files_remain_in_etc_mqtls() {
    let installed = Installed::new();
    let key = Path::new("/etc/mqtls/tls.key");
    std::fs::write(key, "not a real key\n").expect("write a key");
    let out = run(Command::new("chgrp").arg("mqtls").arg(key));
    assert!(out.status.success(), "chgrp: {}", text(&out));
    drop(installed);
    // Looked at before cleaning up, asserted after, so a failure leaves nothing behind either.
    let (key_kept, group_kept, marker_left) = (key.exists(), group_exists(), Path::new("/var/lib/mqtls").exists());
    let _ = std::fs::remove_dir_all("/etc/mqtls");
    if group_kept {
        let _ = run(Command::new("groupdel").arg("mqtls"));
    }
    assert!(key_kept, "purge removed a file the package did not install");
    assert!(group_kept, "purge removed the group that owns a file left in /etc/mqtls");
    assert!(!marker_left, "purge left /var/lib/mqtls");
}

/// The packaged units differ from the examples only in their header comments and the binary's path,
/// so a change to one that misses the other fails here.
#[test]
fn the_packaged_units_are_the_example_units_with_the_package_paths() {
    let body = |path: &str| {
        let unit = std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        unit.find("\n[Unit]").map(|at| unit[at..].to_string()).unwrap_or_else(|| panic!("{path}: no [Unit]"))
    };
    let example = body("examples/systemd/mqtls.service");
    assert!(example.contains("/usr/local/bin/mqtls "), "the example's path changed: update this test");
    assert_eq!(body("debian/mqtls.service"), example.replace("/usr/local/bin/mqtls ", "/usr/bin/mqtls "));
    assert_eq!(body("debian/mqtls.socket"), body("examples/systemd/mqtls.socket"));
}

/// Every path under `dir` (none if it does not exist); bounded by the tree's size.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}
