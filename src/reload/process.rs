//! One reload of the whole process, asked for by SIGHUP or by `mqtls reload` (the admin endpoint's
//! `POST /reload`): the configuration file first (its allow rules), then every listener's TLS files,
//! each with its outcome, so the one who asked can tell "in service" from "refused".

use std::sync::Arc;

use super::{ConfigReload, ConfigReloadOutcome, ReloadError, ReloadOutcome, ReloadReason, Reloader};

/// Everything SIGHUP reloads, for one process.
pub(crate) struct ProcessReload {
    config: Option<Arc<ConfigReload>>,
    /// Each listener's label (name or address) and reloader, in configuration order.
    listeners: Vec<(String, Arc<Reloader>)>,
}

/// The outcome of one [`ProcessReload::run`].
#[derive(Debug)]
pub(crate) struct ReloadReport {
    /// `None` when the process was started without a configuration file to re-read.
    config: Option<Result<ConfigReloadOutcome, ReloadError>>,
    listeners: Vec<(String, Result<ReloadOutcome, ReloadError>)>,
}

impl ProcessReload {
    pub(crate) fn new(config: Option<Arc<ConfigReload>>, listeners: Vec<(String, Arc<Reloader>)>) -> ProcessReload {
        ProcessReload { config, listeners }
    }

    /// Re-reads the configuration file, then reloads every listener's TLS files (whatever the file's
    /// outcome: they are the files of the settings in service), and reports. Each part logs its own
    /// outcome and counts it in `mqtls_tls_reloads_total`.
    pub(crate) async fn run(&self, reason: ReloadReason) -> ReloadReport {
        let config = match self.config.clone() {
            Some(config) if config.file().is_some() => {
                Some(match tokio::task::spawn_blocking(move || config.reload()).await {
                    Ok(outcome) => outcome.map_err(|err| ReloadError::Config(Arc::new(err))),
                    Err(err) => {
                        tracing::error!(%err, "configuration reload task failed");
                        Err(ReloadError::Unfinished(err.to_string()))
                    }
                })
            }
            _ => None,
        };
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (label, reloader) in &self.listeners {
            listeners.push((label.clone(), reloader.request(reason).await));
        }
        ReloadReport { config, listeners }
    }
}

impl ReloadReport {
    /// Whether anything was refused: then what is in service is what was before, for that part.
    pub(crate) fn refused(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.is_err()) || self.listeners.iter().any(|(_, r)| r.is_err())
    }

    /// Every refusal on one line, each naming its listener when there are several.
    pub(crate) fn refusals(&self) -> String {
        let several = self.listeners.len() > 1;
        let config = self.config.iter().filter_map(|c| c.as_ref().err()).map(|err| err.to_string());
        let tls = self.listeners.iter().filter_map(|(label, r)| {
            let err = r.as_ref().err()?;
            Some(if several { format!("listener {label}: {err}") } else { err.to_string() })
        });
        config.chain(tls).collect::<Vec<_>>().join("; ")
    }

    /// What was taken, one line per part, for the operator who asked.
    pub(crate) fn summary(&self) -> String {
        let mut lines = Vec::new();
        match &self.config {
            Some(Ok(outcome)) => {
                if outcome.rules_changed.is_empty() {
                    lines.push("configuration file re-read: allow rules unchanged".to_string());
                } else {
                    lines.push(format!(
                        "configuration file re-read: new allow rules in service for {}",
                        outcome.rules_changed.join(", ")
                    ));
                }
                if !outcome.needs_restart.is_empty() {
                    lines.push(format!(
                        "changed but NOT in service until a restart: {}",
                        outcome.needs_restart.join(", ")
                    ));
                }
            }
            Some(Err(err)) => lines.push(format!("configuration file refused: {err}")),
            None => lines.push("no configuration file to re-read".to_string()),
        }
        for (label, outcome) in &self.listeners {
            lines.push(match outcome {
                Ok(ReloadOutcome::Unchanged) => format!("listener {label}: TLS files unchanged"),
                Ok(ReloadOutcome::Reloaded { changed, leaf }) => {
                    let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
                    format!(
                        "listener {label}: new TLS files in service ({}); server certificate {} (serial {}, not after {})",
                        files.join(", "),
                        leaf.subject,
                        leaf.serial,
                        leaf.not_after_rfc3339()
                    )
                }
                Err(err) => format!("listener {label}: refused: {err}"),
            });
        }
        lines.join("\n")
    }
}
