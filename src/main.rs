//! The binary: parse the command line, load the configuration, build the application, run it; or
//! `check`, `identity`, `reload`. The exit status says whose move it is: 1 for a failure at run time
//! (a restart may cure it), 2 when the configuration must change (a restart would fail the same way,
//! so the systemd unit's `RestartPreventExitStatus=2` does not restart).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mqtls::app::AppError;
use mqtls::config::{Cli, Command, Config, ConfigError, RunArgs};
use mqtls::conn::socket::{PassedError, PassedSockets};
use mqtls::ops::logging;
use mqtls::ops::reload_command::{self, ReloadCommandError};
use mqtls::x509::cert::Validity;
use mqtls::x509::identity;
use mqtls::{tls, App};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check(args)) => check(args).map_err(Failure::Config),
        Some(Command::Reload(args)) => reload(args),
        Some(Command::Identity { cert, username_from }) => {
            print_identity(&cert, username_from).map_err(Failure::Config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let (code, err) = match failure {
                Failure::Runtime(err) => (1, err),
                Failure::Config(err) => (2, err),
            };
            // One line: the setting, the file, the reason.
            eprintln!("mqtls: error: {err:#}");
            ExitCode::from(code)
        }
    }
}

/// Why the binary stops with an error; the variant is the exit status.
enum Failure {
    /// Exit status 1: the environment failed (a port in use, no process to reload); a retry may work.
    Runtime(anyhow::Error),
    /// Exit status 2: the configuration or the command line must change.
    Config(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(err: ConfigError) -> Failure {
        Failure::Config(err.into())
    }
}

impl From<AppError> for Failure {
    fn from(err: AppError) -> Failure {
        match err {
            AppError::Tls { .. } => Failure::Config(err.into()),
            // An address in use or not (yet) assigned, a signal handler: the host, not the settings.
            AppError::Bind { .. } | AppError::Signal(_) => Failure::Runtime(err.into()),
            AppError::Passed(err) => err.into(),
        }
    }
}

impl From<PassedError> for Failure {
    fn from(err: PassedError) -> Failure {
        match err {
            // The .socket unit and the configuration disagree: a restart would too.
            PassedError::NotTcp { .. } | PassedError::NotListening { .. } | PassedError::Unmatched { .. } => {
                Failure::Config(err.into())
            }
            PassedError::Io { .. } => Failure::Runtime(err.into()),
        }
    }
}

impl From<ReloadCommandError> for Failure {
    fn from(err: ReloadCommandError) -> Failure {
        if err.is_configuration() {
            Failure::Config(err.into())
        } else {
            Failure::Runtime(err.into())
        }
    }
}

/// `mqtls reload`: asks the running process and prints what it put in service.
fn reload(args: RunArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .map_err(Failure::Runtime)?;
    let taken = runtime.block_on(reload_command::reload(&args))?;
    println!("{taken}");
    Ok(())
}

/// Validates the configuration and every listener's TLS files, then prints the effective settings.
fn check(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args)?;
    for listener in &config.listeners {
        let origin = config.origin_of(listener);
        let in_origin = |e: tls::TlsError| anyhow::anyhow!("{e} (settings from {origin})");
        let mut files = tls::TlsFiles::read(&listener.tls).map_err(in_origin)?;
        let mut crl_failures = Vec::new();
        if listener.tls.crl_fetch.enabled() {
            let (cache, failed) = mqtls::crl::fetch_once_blocking(&listener.tls)?;
            files = files.with_fetched(&cache);
            crl_failures = failed;
        }
        let loaded = tls::build(&listener.tls, &files).map_err(in_origin)?;
        let leaf = loaded.leaf;
        println!("# configuration OK ({origin})");
        println!(
            "# server certificate: {} (serial {}, not after {}, sha256 {})",
            leaf.subject,
            leaf.serial,
            leaf.not_after_rfc3339(),
            leaf.sha256
        );
        match leaf.validity() {
            Validity::Valid => {}
            Validity::Expired => {
                println!("# WARNING: the server certificate EXPIRED at {}", leaf.not_after_rfc3339())
            }
            Validity::NotYetValid => {
                println!("# WARNING: the server certificate is NOT VALID before {}", leaf.not_before_rfc3339())
            }
        }
        for crl in &loaded.certificates.crls {
            println!(
                "# crl: {} issuer={} this_update={} next_update={} entries={}",
                crl.source,
                crl.issuer,
                crl.this_update,
                crl.next_update.as_deref().unwrap_or("none"),
                crl.entries
            );
        }
        if let Some(ocsp) = &loaded.certificates.ocsp {
            println!(
                "# ocsp_staple: {} status={} this_update={} next_update={}",
                ocsp.path.display(),
                ocsp.status,
                ocsp.this_update,
                ocsp.next_update.as_deref().unwrap_or("none")
            );
            if !ocsp.matches_certificate {
                println!(
                    "# WARNING: the OCSP response is about serial {}, not the server certificate's: it is NOT STAPLED",
                    ocsp.serial
                );
            } else if !ocsp.served_now() {
                println!(
                    "# WARNING: the OCSP response is outside its validity period: it is NOT STAPLED until replaced"
                );
            }
        }
        if let (Some(path), Some(keys)) = (&listener.tls.ticket_keys, loaded.ticket_keys) {
            println!("# ticket_keys: {} holds {keys} key(s); the first seals new tickets", path.display());
        }
        for (url, err) in crl_failures {
            println!("# crl: {url} FAILED: {err}");
        }
    }
    println!("{config}");
    Ok(())
}

fn print_identity(cert: &std::path::Path, from: identity::UsernameFrom) -> anyhow::Result<()> {
    let der = CertificateDer::pem_file_iter(cert)
        .and_then(|mut it| it.next().ok_or(rustls::pki_types::pem::Error::NoItemsFound))
        .and_then(|r| r)
        .map_err(|e| anyhow::anyhow!("reading a PEM certificate from {}: {}", cert.display(), tls::pem_problem(&e)))?;
    let username = identity::username(&der, from).with_context(|| format!("{}", cert.display()))?;
    println!("{username}");
    Ok(())
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let config = Config::load(&args)?;
    // Before the runtime's threads exist: taking them clears LISTEN_FDS and LISTEN_PID.
    let passed = PassedSockets::from_env()?;
    let global = config.global.clone();
    // Logging first, so an expired certificate's warning at start-up reaches the log.
    logging::init(&global.log_level, global.log_format);
    // Each connection holds two descriptors; the usual soft limit (1024) would cap a proxy at ~500.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open-file limit"),
    }
    if let Some(window) = global.busy_poll {
        tracing::info!(window = ?window, "busy polling after traffic");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(global.threads)
        // Look for I/O every 8 task polls rather than 61: during a handshake storm a listener's driver
        // turn is a few handshake steps, and established connections must not wait 61 of them.
        .event_interval(8)
        .enable_all()
        .build()
        .context("starting the runtime")
        .map_err(Failure::Runtime)?;
    runtime.block_on(async move {
        let app = App::bind_with(config, Some(args), passed).await?;
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(mqtls::ops::signal::watch(shutdown.clone()));
        // On a worker, not on this (the main) thread: with `threads = 1` the accept loop then shares
        // the one worker instead of waking a second thread for every connection.
        let served = tokio::spawn(app.run(shutdown)).await;
        signals.abort();
        served.context("the server task failed").map_err(Failure::Runtime)??;
        Ok(())
    })
}
