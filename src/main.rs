//! The binary: parse the command line, load the configuration, build the application, run it.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use mqtls::config::{Cli, Command, Config, RunArgs};
use mqtls::conn::socket::PassedSockets;
use mqtls::ops::logging;
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
        Some(Command::Check(args)) => check(args),
        Some(Command::Identity { cert, username_from }) => print_identity(&cert, username_from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the setting, the file, the reason.
            eprintln!("mqtls: error: {err:#}");
            ExitCode::from(2)
        }
    }
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

fn run(args: RunArgs) -> anyhow::Result<()> {
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
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let app = App::bind_with(config, Some(args), passed).await?;
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(mqtls::ops::signal::watch(shutdown.clone()));
        // On a worker, not on this (the main) thread: with `threads = 1` the accept loop then shares
        // the one worker instead of waking a second thread for every connection.
        let served = tokio::spawn(app.run(shutdown)).await;
        signals.abort();
        Ok(served.context("the server task failed")??)
    })
}
