//! Hot reload of the TLS material: certificate chain, key, client CA bundle and CRLs rotate without a
//! restart and without touching an established connection.
//!
//! Three triggers feed one [`Reloader::reload`]: a `notify` watch on the *directories* holding the files
//! (debounced), SIGHUP, and a periodic re-check by content hash. Directories rather than files, because
//! editors, `cp`/`mv` and Kubernetes all replace a file by rename (Kubernetes by swapping a `..data`
//! symlink to a fresh timestamped directory), and a watch on the old inode then sees nothing. The
//! re-check covers file systems whose changes inotify never reports (NFS, some volume drivers).
//!
//! A reload reads every file, skips if their hashes are what is already loaded, builds and validates a
//! whole new `ServerConfig`, and only then publishes it; on any failure the last good configuration
//! stays in service and the failed set is *not* remembered, so the next event retries. That rule is
//! what pairs a certificate with its key: while only one of them is new the key does not match the
//! leaf, the build fails, and the write of the other half triggers the retry that succeeds.
//!
//! SIGHUP and `mqtls reload` also re-read the configuration file ([`ConfigReload`]): the allow rules
//! are swapped in; every other setting keeps its start-up value, and a log line names the ones that
//! changed and need a restart. One [`ProcessReload`] per process ([`crate::app`]) does that once, then
//! asks every listener's reloader ([`Reloader::request`]) and collects the outcomes, so that
//! `mqtls reload` can tell the operator whether the new files are in service.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, RunArgs};
use crate::ops::metrics::{Metrics, ResultLabel};
use crate::tls::{self, TlsError, TlsFiles, TlsHandle, TlsSettings};
use crate::x509::cert::{CertInfo, Validity};
use crate::x509::rules::Rules;

mod process;
pub(crate) use process::ProcessReload;

/// However busy a directory is, a burst of events delays the reload by at most this many debounce
/// periods: keeps "new files in use within 2 s" true next to a file that is rewritten continuously.
const MAX_DEBOUNCE_PERIODS: u32 = 5;

/// Symlink hops followed when collecting the directories to watch (the kernel's own limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Re-check period: short enough that a rotation on NFS is live within a minute, long enough that
/// hashing a few PEM files is noise.
pub(crate) const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Quiet period after file events: tools that write a certificate then its key finish well within
/// it, and it still leaves most of the 2 s budget from write to new handshakes.
pub(crate) const DEFAULT_RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// When the TLS files are re-read; under the file's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSettings {
    /// Period of the content-hash re-check; `None` turns it off.
    #[serde(rename = "reload_interval", serialize_with = "crate::duration::serialize_or_off")]
    pub interval: Option<Duration>,
    /// Quiet period after the last file event before reloading.
    #[serde(rename = "reload_debounce", serialize_with = "crate::duration::serialize")]
    pub debounce: Duration,
    /// Whether to watch the directories at all. Always true from the configuration; the tests turn it
    /// off to exercise SIGHUP and the periodic re-check alone.
    #[serde(skip)]
    pub watch: bool,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings { interval: Some(DEFAULT_RELOAD_INTERVAL), debounce: DEFAULT_RELOAD_DEBOUNCE, watch: true }
    }
}

/// What triggered a reload, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadReason {
    Startup,
    /// A file event in a watched directory, after the debounce.
    Watch,
    Sighup,
    /// `mqtls reload`, through the admin endpoint's `POST /reload`.
    Command,
    /// The periodic content-hash re-check.
    Poll,
    /// A new CRL fetched over HTTP ([`Reloader::refresh`]).
    Crl,
}

impl fmt::Display for ReloadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReloadReason::Startup => "startup",
            ReloadReason::Watch => "watch",
            ReloadReason::Sighup => "sighup",
            ReloadReason::Command => "command",
            ReloadReason::Poll => "poll",
            ReloadReason::Crl => "crl",
        })
    }
}

/// The result of a successful [`Reloader::reload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Every file hashes as the configuration in service: nothing was built.
    Unchanged,
    /// A new configuration is in service for every later handshake.
    Reloaded {
        /// The files whose content differs from the previous good set.
        changed: Vec<PathBuf>,
        leaf: CertInfo,
    },
}

/// Why a reload that was asked for (SIGHUP, `mqtls reload`) put nothing new in service. The files and
/// settings in service stay.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReloadError {
    /// A listener's TLS files don't validate.
    #[error("{0}")]
    Tls(Arc<TlsError>),
    /// The configuration file doesn't validate.
    #[error("{0}")]
    Config(Arc<ConfigError>),
    /// The reload ended without an outcome: its task failed, or the process is shutting down.
    #[error("the reload did not finish: {0}")]
    Unfinished(String),
}

/// Where a requested reload's outcome is sent.
type Waiter = oneshot::Sender<Result<ReloadOutcome, ReloadError>>;

/// What the reloader remembers between attempts.
struct State {
    /// (path, SHA-256) of every file of the configuration in service, in `TlsFiles::iter` order.
    loaded: Vec<(PathBuf, [u8; 32])>,
    /// The last failure logged at error level, so an unchanged bad set polled every minute does not
    /// repeat the same line forever.
    last_error: Option<String>,
}

/// Owns the TLS settings and the handle every handshake reads; see the module documentation.
pub struct Reloader {
    tls: TlsSettings,
    settings: ReloadSettings,
    handle: Arc<TlsHandle>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    /// Set by [`Reloader::request`]; the loop reloads when it is and answers every waiter.
    requested: Notify,
    /// Who asked for a reload since the loop last took the list, and why.
    waiters: Mutex<Vec<(ReloadReason, Waiter)>>,
    /// CRLs fetched over HTTP, part of the client trust; set by [`Reloader::refresh`].
    crls: Option<Arc<crate::crl::CrlCache>>,
    refresh: Notify,
}

impl Reloader {
    /// Loads the files once (with the same validation and warnings as every reload) and returns a
    /// reloader serving that configuration.
    pub fn new(tls: TlsSettings, settings: ReloadSettings, metrics: Arc<Metrics>) -> Result<Reloader, TlsError> {
        Reloader::with_crls(tls, settings, metrics, None)
    }

    /// As [`Reloader::new`], with the CRLs `crls` holds (now and whenever it asks for a
    /// [`Reloader::refresh`]) as part of the client trust.
    pub(crate) fn with_crls(
        tls: TlsSettings,
        settings: ReloadSettings,
        metrics: Arc<Metrics>,
        crls: Option<Arc<crate::crl::CrlCache>>,
    ) -> Result<Reloader, TlsError> {
        let files = read_files(&tls, crls.as_deref())?;
        let loaded = tls::build(&tls, &files)?;
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        log_loaded(ReloadReason::Startup, &paths, &loaded.leaf, "new");
        metrics.set_certificates_for(&cert_source(&tls), &loaded.certificates);
        Ok(Reloader {
            tls,
            settings,
            handle: Arc::new(TlsHandle::new(&loaded)),
            metrics,
            state: Mutex::new(State { loaded: digests(&files), last_error: None }),
            requested: Notify::new(),
            waiters: Mutex::new(Vec::new()),
            crls,
            refresh: Notify::new(),
        })
    }

    /// Asks the running loop to reload because the fetched CRLs changed.
    pub(crate) fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// Asks the running loop (see [`Reloader::start`]) to reload now and waits for the outcome. Through
    /// the loop rather than straight to [`Reloader::reload`], so the directory watch is brought up to
    /// date first, as for every other trigger. The reload starts after this call: a change written
    /// before it is always seen.
    pub(crate) async fn request(&self, reason: ReloadReason) -> Result<ReloadOutcome, ReloadError> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push((reason, tx));
        self.requested.notify_one();
        rx.await.unwrap_or_else(|_| Err(ReloadError::Unfinished("the TLS reloader stopped".into())))
    }

    /// The handle to give the proxy: it always holds the newest good configuration.
    pub(crate) fn handle(&self) -> Arc<TlsHandle> {
        self.handle.clone()
    }

    /// Re-reads every file (through symlinks as they are now) and, if any content changed, validates
    /// and publishes a new configuration. On failure the configuration in service is kept and the
    /// error is logged once (naming the file and the reason) and returned.
    pub fn reload(&self, reason: ReloadReason) -> Result<ReloadOutcome, TlsError> {
        let mut state = self.lock();
        let result = read_files(&self.tls, self.crls.as_deref()).and_then(|files| {
            let now = digests(&files);
            if now == state.loaded {
                return Ok((now, None));
            }
            let loaded = tls::build(&self.tls, &files)?;
            // A rotated server certificate or key alone leaves every device's session as valid as it
            // was: keep them resumable, rather than send the whole fleet through full handshakes.
            let trust: Vec<&PathBuf> = files.client_trust().map(|f| &f.path).collect();
            let trust_kept = now.iter().filter(|(path, _)| trust.contains(&path)).all(|e| state.loaded.contains(e));
            let loaded = if trust_kept { loaded.keep_sessions_of(&self.handle.current()) } else { loaded };
            Ok((now, Some((loaded, trust_kept))))
        });
        match result {
            Ok((_, None)) => {
                debug!(%reason, "TLS files unchanged");
                Ok(ReloadOutcome::Unchanged)
            }
            Ok((now, Some((loaded, sessions_kept)))) => {
                let changed: Vec<PathBuf> =
                    now.iter().filter(|entry| !state.loaded.contains(entry)).map(|(path, _)| path.clone()).collect();
                self.handle.store(&loaded, !sessions_kept);
                self.metrics.set_certificates_for(&cert_source(&self.tls), &loaded.certificates);
                self.metrics.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                state.loaded = now;
                state.last_error = None;
                log_loaded(reason, &changed, &loaded.leaf, if sessions_kept { "kept" } else { "ended" });
                Ok(ReloadOutcome::Reloaded { changed, leaf: loaded.leaf })
            }
            Err(err) => {
                self.metrics.reloads.get_or_create(&ResultLabel { result: "error" }).inc();
                let text = err.to_string();
                if state.last_error.as_deref() == Some(text.as_str()) {
                    debug!(%reason, %err, "TLS reload still failing; keeping the configuration in service");
                } else {
                    error!(%reason, kind = err.label(), %err, "TLS reload failed; keeping the configuration in service");
                    state.last_error = Some(text);
                }
                Err(err)
            }
        }
    }

    /// Installs the directory watch now (so no write after this returns goes unseen), then runs the
    /// watch, debounce, SIGHUP and re-check loop until `shutdown`.
    ///
    /// Takes `Arc<Self>` rather than `self` so callers (tests, an admin endpoint) can still trigger
    /// [`Reloader::reload`] while the loop runs.
    pub(crate) fn start(self: Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let (tx, events) = mpsc::unbounded_channel();
        let watch = self.settings.watch.then(|| {
            let mut w = DirWatch::new(tx);
            w.sync(&self.tls);
            w
        });
        tokio::spawn(self.run(watch, events, shutdown))
    }

    async fn run(
        self: Arc<Self>,
        mut watch: Option<DirWatch>,
        mut events: mpsc::UnboundedReceiver<WatchEvent>,
        shutdown: CancellationToken,
    ) {
        let mut poll = self.settings.interval.map(|period| {
            let mut i = tokio::time::interval_at(Instant::now() + period, period);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let debounce = self.settings.debounce;
        if watch.is_some() {
            // A write between the initial load and the watch being in place produced no event: look
            // once before saying we are watching, so every write after that line is seen by an event.
            let _ = self.clone().reload_off_runtime(ReloadReason::Watch).await;
        }
        // (first event of the burst, reload at).
        let mut pending: Option<(Instant, Instant)> = None;
        info!(
            watch = self.settings.watch,
            interval = %self.settings.interval.map_or("off".to_string(), |i| humantime::format_duration(i).to_string()),
            debounce = %humantime::format_duration(debounce),
            "watching TLS files for changes (SIGHUP reloads at once)"
        );
        loop {
            let due = pending.map(|(_, at)| at);
            let mut waiters = Vec::new();
            let reason = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.requested.notified() => {
                    // Taken before the reload starts: whoever asks after this gets the next one.
                    waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
                    waiters.first().map_or(ReloadReason::Sighup, |(reason, _)| *reason)
                }
                _ = self.refresh.notified() => ReloadReason::Crl,
                Some(event) = events.recv() => {
                    if watch.as_ref().is_some_and(|w| w.is_relevant(&event)) {
                        let now = Instant::now();
                        let first = pending.map_or(now, |(first, _)| first);
                        let at = (now + debounce).min(first + debounce * MAX_DEBOUNCE_PERIODS);
                        pending = Some((first, at));
                    }
                    continue;
                }
                _ = sleep_until(due), if due.is_some() => ReloadReason::Watch,
                _ = tick(&mut poll) => ReloadReason::Poll,
            };
            pending = None;
            if let Some(w) = watch.as_mut() {
                // A replaced directory or a new symlink target needs a fresh watch before reading, so a
                // write landing during the reload still produces an event.
                w.sync(&self.tls);
            }
            let outcome = self.clone().reload_off_runtime(reason).await;
            for (_, waiter) in waiters {
                let _ = waiter.send(outcome.clone());
            }
        }
        debug!("TLS reloader stopped");
    }

    /// File reads and certificate parsing block; this keeps them off the runtime's worker threads.
    async fn reload_off_runtime(self: Arc<Self>, reason: ReloadReason) -> Result<ReloadOutcome, ReloadError> {
        let work = move || self.reload(reason);
        match tokio::task::spawn_blocking(work).await {
            Ok(outcome) => outcome.map_err(|err| ReloadError::Tls(Arc::new(err))),
            Err(err) => {
                error!(%err, "TLS reload task failed");
                Err(ReloadError::Unfinished(err.to_string()))
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a harmful way: at worst the
        // next reload rebuilds an unchanged set.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a successful re-read of the configuration file ([`ConfigReload::reload`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigReloadOutcome {
    /// The listeners whose allow rules changed (and were swapped in).
    pub(crate) rules_changed: Vec<String>,
    /// The settings that changed in the file but need a restart (see [`Config::needs_restart`]).
    pub(crate) needs_restart: Vec<String>,
}

/// SIGHUP's re-read of the configuration file: the same command line over the file as it is now.
pub(crate) struct ConfigReload {
    args: RunArgs,
    in_service: Config,
    /// Counts a refused file (and new allow rules) in `mqtls_tls_reloads_total`, the counter that
    /// alerts on failed reloads watch.
    metrics: Arc<Metrics>,
    /// Each listener's allow rules and its TLS handle (whose connections re-check when the rules
    /// change), in the order of `in_service.listeners`.
    rules: Vec<(Arc<ArcSwap<Rules>>, Arc<TlsHandle>)>,
}

impl ConfigReload {
    pub(crate) fn new(
        args: RunArgs,
        in_service: Config,
        rules: Vec<(Arc<ArcSwap<Rules>>, Arc<TlsHandle>)>,
        metrics: Arc<Metrics>,
    ) -> ConfigReload {
        ConfigReload { args, in_service, rules, metrics }
    }

    /// The file this re-reads, if any.
    pub(crate) fn file(&self) -> Option<&Path> {
        self.in_service.file.as_deref()
    }

    /// Re-reads the file and swaps in every listener's new allow rules; logs what needs a restart.
    /// On any error the rules in service stay.
    pub(crate) fn reload(&self) -> Result<ConfigReloadOutcome, ConfigError> {
        let Some(file) = &self.in_service.file else {
            debug!("no configuration file to re-read; allow rules unchanged");
            return Ok(ConfigReloadOutcome { rules_changed: Vec::new(), needs_restart: Vec::new() });
        };
        let new = Config::load(&self.args).and_then(|new| {
            let same_listeners = new.listeners.len() == self.in_service.listeners.len()
                && new.listeners.iter().zip(&self.in_service.listeners).all(|(n, o)| n.name == o.name);
            if same_listeners {
                Ok(new)
            } else {
                Err(ConfigError::Invalid {
                    setting: "listener",
                    origin: crate::config::Origin::File(file.clone()),
                    reason: "the listeners in the file are not the ones in service; restart to change listeners".into(),
                })
            }
        });
        let new = match new {
            Ok(c) => c,
            Err(err) => {
                self.metrics.reloads.get_or_create(&ResultLabel { result: "error" }).inc();
                error!(file = %file.display(), %err, "configuration reload failed; keeping the allow rules in service");
                return Err(err);
            }
        };
        let mut rules_changed = Vec::new();
        for ((listener, (rules, handle)), old) in new.listeners.iter().zip(&self.rules).zip(&self.in_service.listeners)
        {
            if **rules.load() == listener.authz {
                continue;
            }
            let counts: Vec<String> = crate::x509::rules::RuleKind::ALL
                .iter()
                .map(|&k| format!("{}={}", k.setting(), listener.authz.patterns(k).len()))
                .collect();
            rules.store(Arc::new(listener.authz.clone()));
            handle.announce_trust_change();
            info!(file = %file.display(), listener = old.name.as_deref(), rules = counts.join(" "), "allow rules reloaded");
            rules_changed.push(old.label());
        }
        if rules_changed.is_empty() {
            info!(file = %file.display(), "configuration re-read; allow rules unchanged");
        } else {
            self.metrics.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
        }
        let needs_restart = self.in_service.needs_restart(&new);
        if !needs_restart.is_empty() {
            warn!(
                file = %file.display(),
                settings = needs_restart.join(", "),
                "configuration changes that need a restart to take effect; they are not in service"
            );
        }
        Ok(ConfigReloadOutcome { rules_changed, needs_restart })
    }
}

fn read_files(tls: &TlsSettings, crls: Option<&crate::crl::CrlCache>) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles::read(tls)?;
    Ok(match crls {
        Some(cache) => files.with_fetched(cache),
        None => files,
    })
}

fn digests(files: &TlsFiles) -> Vec<(PathBuf, [u8; 32])> {
    files.iter().map(|f| (f.path.clone(), f.sha256())).collect()
}

/// `sessions`: what happened to resumable sessions ("new" at start-up, "kept" or "ended" on reload).
fn log_loaded(reason: ReloadReason, changed: &[PathBuf], leaf: &CertInfo, sessions: &str) {
    let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
    let files = files.join(", ");
    let message =
        if reason == ReloadReason::Startup { "TLS configuration loaded" } else { "TLS configuration reloaded" };
    info!(
        %reason,
        files,
        sessions,
        subject = %leaf.subject,
        serial = %leaf.serial,
        not_after = %leaf.not_after_rfc3339(),
        sha256 = %leaf.sha256,
        "{message}"
    );
    match leaf.validity() {
        Validity::Valid => {}
        Validity::Expired => warn!(
            subject = %leaf.subject,
            not_after = %leaf.not_after_rfc3339(),
            "SERVER CERTIFICATE EXPIRED: clients will refuse the handshake; loaded anyway because \
             refuse_expired is false"
        ),
        Validity::NotYetValid => warn!(
            subject = %leaf.subject,
            not_before = %leaf.not_before_rfc3339(),
            "SERVER CERTIFICATE NOT YET VALID: clients will refuse the handshake until not_before; loaded \
             anyway because refuse_expired is false"
        ),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(poll: &mut Option<Interval>) {
    match poll {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

type WatchEvent = Result<notify::Event, notify::Error>;

/// The directory watch: the directories holding every configured file (and every symlink hop's
/// target), plus their parents so that replacing a whole directory is seen too.
struct DirWatch {
    tx: mpsc::UnboundedSender<WatchEvent>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories that directly hold a configured file or a symlink on the way to one.
    file_dirs: BTreeSet<PathBuf>,
    /// What is watched now: each directory with the inode it had, to notice a replaced directory.
    watched: Vec<(PathBuf, Option<(u64, u64)>)>,
}

impl DirWatch {
    fn new(tx: mpsc::UnboundedSender<WatchEvent>) -> DirWatch {
        DirWatch { tx, watcher: None, file_dirs: BTreeSet::new(), watched: Vec::new() }
    }

    /// Re-creates the watch if the set of directories, or any directory's inode, changed since the
    /// last call. Directories that do not exist (yet) are skipped; their parent's watch reports them.
    fn sync(&mut self, settings: &TlsSettings) {
        let file_dirs = file_dirs(settings);
        let mut all = file_dirs.clone();
        all.extend(file_dirs.iter().filter_map(|d| d.parent().map(Path::to_path_buf)));
        let wanted: Vec<(PathBuf, Option<(u64, u64)>)> = all.into_iter().map(|d| (d.clone(), inode(&d))).collect();
        self.file_dirs = file_dirs;
        if self.watcher.is_some() && wanted == self.watched {
            return;
        }
        // Dropping the old watcher first releases its inotify watches.
        self.watcher = None;
        let tx = self.tx.clone();
        let mut watcher = match notify::recommended_watcher(move |event: WatchEvent| {
            let _ = tx.send(event);
        }) {
            Ok(w) => w,
            Err(err) => {
                warn!(%err, "cannot watch the TLS directories; relying on SIGHUP and the periodic re-check");
                self.watched = Vec::new();
                return;
            }
        };
        for (dir, ino) in &wanted {
            if ino.is_none() {
                continue;
            }
            if let Err(err) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), %err, "cannot watch directory; relying on the periodic re-check for it");
            }
        }
        debug!(dirs = ?wanted.iter().map(|(d, _)| d.display().to_string()).collect::<Vec<_>>(), "watching");
        self.watcher = Some(watcher);
        self.watched = wanted;
    }

    /// Whether `event` may concern a configured file. Opens and reads (including the reloader's own)
    /// are not changes; events in a parent directory matter only when they name a file directory.
    fn is_relevant(&self, event: &WatchEvent) -> bool {
        let Ok(event) = event else { return true };
        match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return false,
            _ => {}
        }
        // No paths: an overflow or rescan notice; something may have changed.
        event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| self.file_dirs.contains(p) || p.parent().is_some_and(|parent| self.file_dirs.contains(parent)))
    }
}

/// Whose certificates these are, for the expiry gauges: one set per listener, keyed by its `cert`.
fn cert_source(tls: &TlsSettings) -> String {
    tls.cert.display().to_string()
}

/// The directories that hold each configured file and every symlink on the way to it, absolute.
fn file_dirs(settings: &TlsSettings) -> BTreeSet<PathBuf> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let files = [&settings.cert, &settings.key]
        .into_iter()
        .chain(settings.client_ca.as_ref())
        .chain(&settings.crls)
        .chain(settings.sni.iter().flat_map(|s| [&s.cert, &s.key]))
        .chain(settings.ocsp_staple.as_ref())
        .chain(settings.ticket_keys.as_ref());
    let mut dirs = BTreeSet::new();
    for file in files {
        let mut path = cwd.join(file);
        for _ in 0..MAX_SYMLINK_HOPS {
            let Some(parent) = path.parent().map(Path::to_path_buf) else { break };
            if let Ok(real) = parent.canonicalize() {
                dirs.insert(real);
            }
            dirs.insert(parent.clone());
            match std::fs::read_link(&path) {
                Ok(target) => path = parent.join(target),
                Err(_) => break,
            }
        }
    }
    dirs
}

fn inode(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}
