//! Settings: the command line and the TOML file, merged once into validated types.
//!
//! Every setting is declared once ([`layer`]) and exists both as a flag and as a key of the same name
//! in the file (dashes become underscores). Per-listener settings may also be set in a `[[listener]]`
//! block. Precedence: flag → listener block → top level → default. [`validate`] turns the layers into
//! [`Config`]: the process-wide [`Global`] settings and one [`Listener`] per listener, each made of the
//! settings types of the modules that use them. Errors name the setting and where it was set, so a bad
//! deployment stops with one line an operator can act on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

mod error;
pub(crate) mod layer;
mod validate;

pub use error::{ConfigError, Origin};
pub use layer::{Block, Layer};

pub use crate::conn::admission::AdmissionSettings;
pub(crate) use crate::conn::proxy_protocol::ProxyProtocolSettings;
pub(crate) use crate::conn::upstream::Upstream;
pub use crate::conn::websocket::{ListenerProtocol, Origins, WebSocketSettings};
pub use crate::conn::Limits;
pub use crate::ops::logging::LogFormat;
pub use crate::recheck::RecheckSettings;
pub use crate::reload::ReloadSettings;
pub use crate::tls::{ClientAuth, SniCert, TlsSettings};
pub(crate) use crate::x509::identity::UsernameFrom;
pub use crate::x509::policy::{ClientIdPolicy, ClientUsername, IdentityPolicy, PasswordPolicy};
pub(crate) use crate::x509::rules::Rules;

#[derive(Debug, Parser)]
#[command(name = "mqtls", version, about = "MQTT-over-TLS proxy that maps client certificates to MQTT usernames")]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Exit status: 0 done; 1 failure at run time (a port in use, no running mqtls to reload, a \
second signal during the drain); 2 configuration or command-line error, or a reload refused (the files or settings \
in service are kept).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate the configuration (including every certificate and key) and print the effective settings.
    Check(RunArgs),
    /// Ask the running mqtls to reload (as SIGHUP does) and wait for the outcome: exits 0 when the new
    /// files and settings are in service, 2 with the reason when they are refused. The running process is
    /// found through the admin address (`admin` in the file, or --admin), which must be set.
    Reload(RunArgs),
    /// Print the MQTT username a certificate maps to.
    Identity {
        /// PEM file whose first certificate is the client's leaf certificate.
        cert: PathBuf,
        #[arg(long, value_enum, default_value_t = UsernameFrom::Cn)]
        username_from: UsernameFrom,
    },
}

/// The command line: a configuration file, and every setting as a flag (which wins over the file).
#[derive(Debug, Default, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c', env = "MQTLS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Layer,
}

/// The process-wide settings (the file's top level and the command line only), under the file's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Global {
    pub log_level: String,
    pub log_format: LogFormat,
    #[serde(flatten)]
    pub limits: Limits,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub drain_timeout: Duration,
    /// Admin HTTP server address; `None` = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    #[serde(serialize_with = "crate::duration::serialize")]
    pub upstream_check_interval: Duration,
    #[serde(flatten)]
    pub reload: ReloadSettings,
    pub refuse_expired: bool,
    /// Worker threads of the multi-thread runtime.
    pub threads: usize,
    /// How long to keep polling after traffic before sleeping; `None` = off.
    #[serde(serialize_with = "crate::duration::serialize_or_off")]
    pub busy_poll: Option<Duration>,
    /// Nice value of the handshake threads; 0 = none, handshakes share the workers.
    pub handshake_nice: u8,
    /// Admission limits: connection rates, per source, per certificate.
    #[serde(flatten)]
    pub admission: AdmissionSettings,
}

/// One listener's settings, under the file's keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    /// The `[[listener]]` block's name (`#1`, `#2`, ... when unnamed); `None` without blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub listen: SocketAddr,
    /// Bind `listen` with SO_REUSEPORT: a successor may bind the same address while this process drains.
    pub reuse_port: bool,
    #[serde(serialize_with = "serialize_display")]
    pub upstream: Upstream,
    #[serde(flatten)]
    pub proxy_protocol: ProxyProtocolSettings,
    #[serde(flatten)]
    pub tls: TlsSettings,
    #[serde(flatten)]
    pub identity: IdentityPolicy,
    /// Allow rules on the client certificate; reloaded from the file on SIGHUP.
    #[serde(flatten)]
    pub authz: Rules,
    /// What established connections are held to after their handshake.
    #[serde(flatten)]
    pub recheck: RecheckSettings,
    /// What the listener speaks inside TLS, and the WebSocket upgrade's settings.
    #[serde(flatten)]
    pub websocket: WebSocketSettings,
}

impl Listener {
    /// For log lines and messages: the name, or the address when unnamed.
    pub(crate) fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.listen.to_string())
    }

    /// For the metrics' `listener` label: the name the operator gave it, or its address when unnamed
    /// (stable across reorderings of the blocks, unlike `#2`; `mqtls check` prints those names, so a
    /// `#` name read back is taken as unnamed too).
    pub(crate) fn metrics_label(&self) -> String {
        match &self.name {
            Some(name) if !name.starts_with('#') => name.clone(),
            _ => self.listen.to_string(),
        }
    }
}

/// The validated configuration. Nothing in here is re-parsed per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    pub global: Global,
    /// At least one.
    pub listeners: Vec<Listener>,
}

impl Config {
    /// Reads the file (if named), lays the flags over it and validates the result.
    pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Some((path.clone(), layer::read_file(path)?)),
            None => None,
        };
        validate::config(&args.settings, file)
    }

    /// The admin address alone, for `mqtls reload`: the flag, else the file's top-level `admin` key read
    /// on its own, so that a file broken elsewhere still leads to the running process (which then refuses
    /// it with the message start-up would give). `None` when neither sets it.
    pub fn admin_address(args: &RunArgs) -> Result<Option<(SocketAddr, Origin)>, ConfigError> {
        let (text, origin) = match (&args.settings.admin, &args.config) {
            (Some(flag), _) => (flag.clone(), Origin::CommandLine),
            (None, Some(path)) => {
                let table: toml::Table = layer::parse_file(path)?;
                let origin = Origin::File(path.clone());
                match table.get("admin") {
                    None => return Ok(None),
                    Some(toml::Value::String(s)) => (s.clone(), origin),
                    Some(other) => {
                        return Err(ConfigError::Invalid {
                            setting: "admin",
                            origin,
                            reason: format!("{other} is not a string"),
                        })
                    }
                }
            }
            (None, None) => return Ok(None),
        };
        match text.parse() {
            Ok(addr) => Ok(Some((addr, origin))),
            Err(e) => Err(ConfigError::Invalid {
                setting: "admin",
                origin,
                reason: format!("{text:?} is not an IP:port address ({e})"),
            }),
        }
    }

    #[cfg(test)]
    /// Validates layers given directly (the file as already parsed text), for tests and tools.
    pub(crate) fn from_layers(flags: &Layer, file: Option<(PathBuf, Layer)>) -> Result<Config, ConfigError> {
        validate::config(flags, file)
    }

    /// Where the settings came from, for messages: the file, or the command line.
    pub(crate) fn origin(&self) -> String {
        match &self.file {
            Some(p) => p.display().to_string(),
            None => "command line".to_string(),
        }
    }

    /// Where one listener's settings came from, for messages.
    pub fn origin_of(&self, listener: &Listener) -> String {
        match &listener.name {
            Some(name) => format!("{}, listener {name}", self.origin()),
            None => self.origin(),
        }
    }

    /// The effective settings as a TOML table, under the file's keys: without `[[listener]]` blocks one
    /// flat table, with them the global keys and a `listener` array.
    pub(crate) fn to_table(&self) -> toml::Table {
        let mut table = to_table(&self.global);
        match self.listeners.as_slice() {
            [only] if only.name.is_none() => table.extend(to_table(only)),
            all => {
                let blocks = all.iter().map(|l| toml::Value::Table(to_table(l))).collect();
                table.insert("listener".into(), toml::Value::Array(blocks));
            }
        }
        table
    }

    /// The settings that differ between `self` (in service) and `new`, by name, except the ones a
    /// reload applies (the allow rules): what a SIGHUP can't change without a restart. A listener's
    /// settings are prefixed with its name when there are several.
    pub(crate) fn needs_restart(&self, new: &Config) -> Vec<String> {
        let mut changed = differing(&to_table(&self.global), &to_table(&new.global), "");
        if self.listeners.len() != new.listeners.len() {
            changed.push("listener".into());
        }
        for (old, new) in self.listeners.iter().zip(&new.listeners) {
            let prefix = match &old.name {
                Some(name) if self.listeners.len() > 1 => format!("listener {name}: "),
                _ => String::new(),
            };
            changed.extend(differing(&to_table(old), &to_table(new), &prefix));
        }
        changed.retain(|name| !name.rsplit(' ').next().unwrap_or(name).starts_with("allow_"));
        changed
    }
}

impl std::fmt::Display for Config {
    /// The effective settings, in the file's own syntax, so `mqtls check` output can seed a config file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = toml::to_string(&self.to_table()).map_err(|_| std::fmt::Error)?;
        f.write_str(text.trim_end())
    }
}

/// A settings type as a TOML table. The types serialize plain values, lists and tables only.
fn to_table<T: Serialize>(value: &T) -> toml::Table {
    toml::Table::try_from(value).unwrap_or_default()
}

/// The keys whose values differ between two tables, sorted.
fn differing(old: &toml::Table, new: &toml::Table, prefix: &str) -> Vec<String> {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| old.get(*k) != new.get(*k)).map(|k| format!("{prefix}{k}")).collect()
}

fn serialize_display<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// The default worker count: one per CPU the process may run on (as tokio itself would choose).
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Relative paths in a file are relative to that file, so a config directory can be moved whole.
fn relative_to(file: Option<&Path>, path: PathBuf) -> PathBuf {
    match file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

#[cfg(test)]
mod tests;
