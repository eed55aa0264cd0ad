//! The binary: parse the command line, load the configuration, run the server.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use mqtls::config::{Cli, Command, Config, RunArgs};
use mqtls::ops::metrics::Metrics;
use mqtls::reload::{ConfigReload, Reloader};
use mqtls::x509::cert::Validity;
use mqtls::{ops::logging, tls, x509::identity, Proxy};
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

fn check(args: RunArgs) -> anyhow::Result<()> {
    let configs = Config::load_all(&args)?;
    for (i, config) in configs.iter().enumerate() {
        let origin = match &config.name {
            Some(name) => format!("{}, listener {name}", config.origin()),
            None => config.origin(),
        };
        let in_origin = |e: tls::TlsError| anyhow::anyhow!("{e} (settings from {origin})");
        let files = tls::TlsFiles::read(&config.tls).map_err(in_origin)?;
        let leaf = tls::build(&config.tls, &files).map_err(in_origin)?.leaf;
        if i > 0 {
            println!();
        }
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
        println!("{config}");
    }
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
    let configs = Config::load_all(&args)?;
    let first = configs.first().context("no listener configured")?.clone();
    // Logging first, so an expired certificate's warning at start-up reaches the log. Global settings
    // (logging, admin) are top-level only, so every listener's copy holds the same values.
    logging::init(&first.log_level, first.log_format);
    // Each connection holds two descriptors; the usual soft limit (1024) would cap a proxy at ~500.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open-file limit"),
    }
    // One registry for every listener: the counters add up across them.
    let metrics = Arc::new(Metrics::new());
    if let Some(window) = first.busy_poll {
        tracing::info!(window = ?window, "busy polling after traffic");
    }
    let mut prepared = Vec::with_capacity(configs.len());
    for config in configs {
        let origin = match &config.name {
            Some(name) => format!("{}, listener {name}", config.origin()),
            None => config.origin(),
        };
        let reloader = Reloader::new(config.tls.clone(), config.reload, metrics.clone())
            .map_err(|e| anyhow::anyhow!("{e} (settings from {origin})"))?;
        let proxy = Proxy::with_tls(config.clone(), reloader.handle(), metrics.clone());
        // SIGHUP re-reads the file with the same command line on top and swaps in its allow rules.
        let reloader =
            Arc::new(reloader.with_config_reload(ConfigReload::new(args.clone(), config.clone(), proxy.rules.clone())));
        prepared.push((config, origin, Arc::new(proxy), reloader));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(first.threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut listeners = Vec::with_capacity(prepared.len());
        for (config, origin, proxy, reloader) in prepared {
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("listen: cannot bind {} (in {origin})", config.listen))?;
            listeners.push((listener, proxy, Some(reloader)));
        }
        let admin = match first.admin {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin: cannot bind {addr} (in {})", first.origin()))?,
            ),
            None => None,
        };
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(mqtls::ops::signal::watch(shutdown.clone()));
        // On a worker, not on this (the main) thread: with `threads = 1` the accept loop then shares
        // the one worker instead of waking a second thread for every connection.
        let served = tokio::spawn(mqtls::run(listeners, admin, shutdown)).await;
        signals.abort();
        served.context("the server task failed")?.context("installing the SIGHUP handler")
    })
}
