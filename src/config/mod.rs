//! Settings: the command line and the TOML file, merged once into validated types.
//!
//! Every setting exists both as a flag and as a key of the same name in the file (dashes become
//! underscores); a flag wins over the file, the file wins over the default. Errors name the setting and
//! where it was set, so a bad deployment stops with one line an operator can act on.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::conn::proxy_protocol::{self, ProxyProtocolSettings, UpstreamProxyProtocol};
use crate::conn::upstream::Upstream;
use crate::x509::identity::UsernameFrom;
use crate::x509::rules::{RuleKind, Rules};

/// Largest CONNECT mqtls buffers by default: ample for long MQTT 5 property lists, small enough that a
/// flood of half-sent CONNECTs costs little.
pub const DEFAULT_MAX_CONNECT_SIZE: usize = crate::mqtt::connect::DEFAULT_MAX_CONNECT_LEN;

/// Enough for a large fleet per replica, while keeping a file-descriptor exhaustion from taking the
/// process down with it (each connection holds two descriptors).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;

/// Handshakes in flight at once. Each holds a rustls connection (a few KiB) for up to the handshake
/// deadline; the cap bounds what a flood of silent or slow ClientHellos can pin, while staying far above
/// what a reconnect storm of real devices has in flight on one replica.
pub const DEFAULT_MAX_HANDSHAKES: usize = 4096;

/// CONNECT bytes held at once beyond each connection's free 4 KiB (see [`crate::conn::budget`]): 128
/// CONNECTs at the 256 KiB cap in flight together, far more than real devices ever send at once, and
/// with `max_handshakes`' worst case (~52 MiB) well inside the Kubernetes example's 256 MiB limit.
pub const DEFAULT_CONNECT_BUFFER_BUDGET: usize = 32 * 1024 * 1024;
/// Re-check period: short enough that a rotation on NFS is live within a minute, long enough that
/// hashing a few PEM files is noise.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Quiet period after file events: tools that write a certificate then its key finish well within
/// it, and it still leaves most of the 2 s budget from write to new handshakes.
pub const DEFAULT_RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);

/// A debounce longer than this would make a rotation look ignored; it is almost certainly a typo.
const MAX_RELOAD_DEBOUNCE: Duration = Duration::from_secs(60);
/// Longest `busy_poll` window: beyond a few milliseconds spinning only burns CPU (an answer that slow
/// no longer finds a sleeping CPU's wake-up significant).
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// The largest remaining length an MQTT fixed header can announce.
use crate::mqtt::connect::MAX_REMAINING_LEN as MQTT_MAX_REMAINING_LENGTH;

#[derive(Debug, Parser)]
#[command(name = "mqtls", version, about = "MQTT-over-TLS proxy that maps client certificates to MQTT usernames")]
#[command(args_conflicts_with_subcommands = true)]
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
    /// Print the MQTT username a certificate maps to.
    Identity {
        /// PEM file whose first certificate is the client's leaf certificate.
        cert: PathBuf,
        #[arg(long, value_enum, default_value_t = UsernameFrom::Cn)]
        username_from: UsernameFrom,
    },
}

/// Whether and how clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// A certificate signed by the client CA is required for the handshake to succeed.
    #[default]
    Required,
    /// Clients may present a certificate (which must then verify) or none (CONNECT passed on unmodified).
    Optional,
    /// No certificate is asked for; CONNECTs pass unmodified.
    None,
}

/// What to do with a username the client put in its CONNECT when the certificate supplies one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientUsername {
    /// Replace it with the certificate identity.
    #[default]
    Overwrite,
    /// Refuse the CONNECT (CONNACK "not authorized") when it differs from the identity.
    Reject,
}

/// What happens to the client's password when the username comes from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordPolicy {
    /// Remove it: the certificate is the credential, and the broker never sees a device secret.
    #[default]
    Drop,
    /// Pass it on unchanged (for brokers that check both).
    Keep,
}

/// What happens to the client identifier the client sent when it presented a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIdPolicy {
    /// Pass it on unchanged.
    #[default]
    Keep,
    /// Replace it with the mapped identity, so one device can't take over another's session.
    FromIdentity,
    /// Refuse (CONNACK "identifier rejected") a client id that does not start with the identity.
    RequirePrefix,
}

impl ClientIdPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientIdPolicy::Keep => "keep",
            ClientIdPolicy::FromIdentity => "from-identity",
            ClientIdPolicy::RequirePrefix => "require-prefix",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Every setting as a flag. All optional here so that the file can fill what the command line omits.
#[derive(Debug, Default, Clone, Args)]
pub struct RunArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long, short = 'c', env = "MQTLS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to accept MQTT-over-TLS connections on [default: 0.0.0.0:8883].
    #[arg(long)]
    pub listen: Option<String>,
    /// Broker address: host:port (resolved at each connect) or unix:/path [default: 127.0.0.1:1883].
    #[arg(long)]
    pub upstream: Option<String>,
    /// PEM file with the server certificate chain, leaf first.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// PEM file with the server private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// PEM bundle of CAs that sign client certificates.
    #[arg(long)]
    pub client_ca: Option<PathBuf>,
    /// required | optional | none [default: required].
    #[arg(long, value_enum)]
    pub client_auth: Option<ClientAuth>,
    /// PEM file of certificate revocation lists (repeatable).
    #[arg(long = "crl")]
    pub crl: Vec<PathBuf>,
    /// Certificate field that becomes the MQTT username [default: cn].
    #[arg(long, value_enum)]
    pub username_from: Option<UsernameFrom>,
    /// overwrite | reject a client-supplied username [default: overwrite].
    #[arg(long, value_enum)]
    pub client_username: Option<ClientUsername>,
    /// drop | keep the client's password when the username comes from the certificate [default: drop].
    #[arg(long, value_enum)]
    pub password: Option<PasswordPolicy>,
    /// keep | from-identity | require-prefix: the client id of a client with a certificate [default: keep].
    #[arg(long, value_enum)]
    pub client_id: Option<ClientIdPolicy>,
    /// Admit certificates whose subject CN matches this glob (repeatable; any allow rule matching admits).
    #[arg(long = "allow-cn", value_name = "GLOB")]
    pub allow_cn: Vec<String>,
    /// Admit certificates with a subject OU matching this glob (repeatable).
    #[arg(long = "allow-ou", value_name = "GLOB")]
    pub allow_ou: Vec<String>,
    /// Admit certificates with a DNS subjectAltName matching this glob (repeatable).
    #[arg(long = "allow-dns", value_name = "GLOB")]
    pub allow_dns: Vec<String>,
    /// Admit certificates with a URI subjectAltName matching this glob; `*` stays within a path segment (repeatable).
    #[arg(long = "allow-uri", value_name = "GLOB")]
    pub allow_uri: Vec<String>,
    /// Admit certificates whose issuer DN (RFC 2253, e.g. "CN=Device CA,O=Acme") matches this glob (repeatable).
    #[arg(long = "allow-issuer", value_name = "GLOB")]
    pub allow_issuer: Vec<String>,
    /// Log filter: a level (info, debug, ...) or RUST_LOG-style directives [default: info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// text | json [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Time allowed for the TLS handshake, e.g. 10s [default: 10s].
    #[arg(long)]
    pub handshake_timeout: Option<String>,
    /// Time allowed for the CONNECT packet after the handshake [default: 10s].
    #[arg(long)]
    pub connect_timeout: Option<String>,
    /// Largest CONNECT accepted, in bytes [default: 262144].
    #[arg(long)]
    pub max_connect_size: Option<usize>,
    /// Bytes all CONNECTs being read may hold together beyond 4 KiB each; past it a CONNECT is refused
    /// ("server busy") [default: 33554432].
    #[arg(long)]
    pub connect_buffer_budget: Option<usize>,
    /// Time allowed to connect to the broker [default: 5s].
    #[arg(long)]
    pub upstream_connect_timeout: Option<String>,
    /// Time the broker has to answer the forwarded CONNECT [default: 10s].
    #[arg(long)]
    pub connack_timeout: Option<String>,
    /// How long established connections may continue after SIGTERM before they are closed [default: 30s].
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// Address of the admin HTTP server (/metrics, /healthz, /readyz, /certs); off unless set.
    #[arg(long)]
    pub admin: Option<String>,
    /// Most client connections open at once; more are closed at accept [default: 100000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most TLS handshakes in progress at once; more are closed at accept [default: 4096].
    #[arg(long)]
    pub max_handshakes: Option<usize>,
    /// How often readiness checks that the broker accepts a TCP connection [default: 5s].
    #[arg(long)]
    pub upstream_check_interval: Option<String>,
    /// How often the TLS files are re-read and compared by content hash, for file systems whose changes
    /// the watcher does not see (NFS); "off" or "0" disables [default: 60s].
    #[arg(long)]
    pub reload_interval: Option<String>,
    /// Quiet period after the last file event before the TLS files are reloaded, so a certificate and
    /// its key written one after the other load as a pair [default: 200ms].
    #[arg(long)]
    pub reload_debounce: Option<String>,
    /// Refuse a server certificate that is expired or not yet valid (at start-up and on reload) instead
    /// of loading it with a warning.
    #[arg(long)]
    pub refuse_expired: bool,
    /// PROXY protocol header written to the broker before the CONNECT: off | v1 | v2 [default: off].
    #[arg(long, value_enum)]
    pub upstream_proxy_protocol: Option<UpstreamProxyProtocol>,
    /// true | false: write the certificate identity into the CONNECT's username. false passes the
    /// CONNECT unchanged and leaves the identity to the PROXY v2 header's CN [default: true].
    #[arg(long)]
    pub rewrite_connect: Option<bool>,
    /// Read a PROXY protocol v1/v2 header before the TLS handshake, from proxy_protocol_from sources.
    #[arg(long)]
    pub accept_proxy_protocol: bool,
    /// Source range (CIDR or address) whose connections must start with a PROXY header (repeatable).
    #[arg(long = "proxy-protocol-from")]
    pub proxy_protocol_from: Vec<String>,
    /// ALPN protocol offered in the handshake, e.g. mqtt or x-amzn-mqtt-ca (repeatable); none = no ALPN.
    #[arg(long = "alpn", value_name = "PROTOCOL")]
    pub alpn: Vec<String>,
    /// Worker threads of the runtime [default: the number of CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// After traffic, keep polling for events this long instead of sleeping (lower round-trip
    /// latency for CPU time), at most 10ms; "off" or "0" disables [default: off].
    #[arg(long)]
    pub busy_poll: Option<String>,
}

/// The configuration file. Unknown keys are errors: a typo must not silently fall back to a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    pub username_from: Option<UsernameFrom>,
    pub client_username: Option<ClientUsername>,
    pub password: Option<PasswordPolicy>,
    pub client_id: Option<ClientIdPolicy>,
    #[serde(default)]
    pub allow_cn: Vec<String>,
    #[serde(default)]
    pub allow_ou: Vec<String>,
    #[serde(default)]
    pub allow_dns: Vec<String>,
    #[serde(default)]
    pub allow_uri: Vec<String>,
    #[serde(default)]
    pub allow_issuer: Vec<String>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub handshake_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub max_connect_size: Option<usize>,
    pub connect_buffer_budget: Option<usize>,
    pub upstream_connect_timeout: Option<String>,
    pub connack_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub admin: Option<String>,
    pub max_connections: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub upstream_check_interval: Option<String>,
    pub reload_interval: Option<String>,
    pub reload_debounce: Option<String>,
    pub refuse_expired: Option<bool>,
    pub upstream_proxy_protocol: Option<UpstreamProxyProtocol>,
    pub rewrite_connect: Option<bool>,
    pub accept_proxy_protocol: Option<bool>,
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    #[serde(default)]
    pub alpn: Vec<String>,
    /// Certificates chosen by the name the client sends (SNI); `cert`/`key` serve every other name.
    #[serde(default)]
    pub sni: Vec<SniFile>,
    /// `[[listener]]` blocks; without any, the top level is the one listener.
    #[serde(default)]
    pub listener: Vec<ListenerFile>,
    pub threads: Option<usize>,
    pub busy_poll: Option<String>,
}

/// One `[[sni]]` / `[[listener.sni]]` entry: a certificate and key served for the listed names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniFile {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One `[[listener]]` block: the per-listener keys. Each one it leaves out is inherited from the top
/// level; a global key (admin, log_level, timeouts, ...) here is an error naming it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    /// For log lines and error messages; defaults to `#1`, `#2`, ... in file order.
    pub name: Option<String>,
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub client_auth: Option<ClientAuth>,
    pub crl: Option<Vec<PathBuf>>,
    pub username_from: Option<UsernameFrom>,
    pub client_username: Option<ClientUsername>,
    pub password: Option<PasswordPolicy>,
    pub client_id: Option<ClientIdPolicy>,
    pub allow_cn: Option<Vec<String>>,
    pub allow_ou: Option<Vec<String>>,
    pub allow_dns: Option<Vec<String>>,
    pub allow_uri: Option<Vec<String>>,
    pub allow_issuer: Option<Vec<String>>,
    pub upstream_proxy_protocol: Option<UpstreamProxyProtocol>,
    pub rewrite_connect: Option<bool>,
    pub accept_proxy_protocol: Option<bool>,
    pub proxy_protocol_from: Option<Vec<String>>,
    pub alpn: Option<Vec<String>>,
    pub sni: Option<Vec<SniFile>>,
}

impl FileConfig {
    /// The top level with one listener block's keys laid over it.
    fn with_listener(&self, l: &ListenerFile) -> FileConfig {
        let mut f = self.clone();
        f.listener = Vec::new();
        macro_rules! over {
            ($($name:ident),*) => {$(
                if l.$name.is_some() {
                    f.$name = l.$name.clone();
                }
            )*};
        }
        over!(
            listen,
            upstream,
            cert,
            key,
            client_ca,
            client_auth,
            username_from,
            client_username,
            password,
            client_id,
            upstream_proxy_protocol,
            rewrite_connect,
            accept_proxy_protocol
        );
        macro_rules! over_list {
            ($($name:ident),*) => {$(
                if let Some(v) = &l.$name {
                    f.$name = v.clone();
                }
            )*};
        }
        over_list!(crl, allow_cn, allow_ou, allow_dns, allow_uri, allow_issuer, proxy_protocol_from, alpn, sni);
        f
    }
}

/// A configuration error: the setting, where it came from, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{setting} (in {origin}): {reason}")]
    Invalid { setting: &'static str, origin: Origin, reason: String },
    #[error("{setting} is required (set it in the config file or with --{flag})", flag = .setting.replace('_', "-"))]
    Missing { setting: &'static str },
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    CommandLine,
    File(PathBuf),
    /// A `[[listener]]` block of the file (or the top level it inherits from), by name.
    Listener(PathBuf, String),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => f.write_str("command line"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Listener(p, name) => write!(f, "{}, listener {name}", p.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// TLS material and client-certificate policy; read from disk when the server configuration is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub crls: Vec<PathBuf>,
    /// Refuse an expired or not-yet-valid server certificate instead of loading it with a warning.
    pub refuse_expired: bool,
    /// ALPN protocols the server accepts, in preference order; empty = no ALPN.
    pub alpn: Vec<String>,
    /// Certificates picked by SNI name; `cert`/`key` serve clients sending no or another name.
    pub sni: Vec<SniCert>,
}

/// A certificate and key served to clients that ask for one of `names` (SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lower-case DNS names; `*.example.org` matches exactly one label in front of `example.org`.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When the TLS files are re-read (see [`crate::reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadSettings {
    /// Period of the content-hash re-check; `None` turns it off.
    pub interval: Option<Duration>,
    /// Quiet period after the last file event before reloading.
    pub debounce: Duration,
    /// Whether to watch the directories at all. Always true from the configuration; the tests turn it
    /// off to exercise SIGHUP and the periodic re-check alone.
    pub watch: bool,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings { interval: Some(DEFAULT_RELOAD_INTERVAL), debounce: DEFAULT_RELOAD_DEBOUNCE, watch: true }
    }
}

/// How a certificate identity reaches the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityPolicy {
    pub username_from: UsernameFrom,
    pub client_username: ClientUsername,
    pub password: PasswordPolicy,
    pub client_id: ClientIdPolicy,
}

/// Deadlines and caps applied to each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connect_size: usize,
    pub upstream_connect_timeout: Duration,
    /// Time the broker has to send its first bytes (the CONNACK) after the forwarded CONNECT.
    pub connack_timeout: Duration,
    /// Client connections open at once; past it new ones are closed at accept.
    pub max_connections: usize,
    /// TLS handshakes in progress at once; past it new connections are closed at accept.
    pub max_handshakes: usize,
    /// CONNECT bytes held by all connections together beyond each one's free allowance.
    pub connect_buffer_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connect_size: DEFAULT_MAX_CONNECT_SIZE,
            upstream_connect_timeout: Duration::from_secs(5),
            connack_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            connect_buffer_budget: DEFAULT_CONNECT_BUFFER_BUDGET,
        }
    }
}

/// The validated configuration. Nothing in here is re-parsed per connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// The `[[listener]]` block's name (`#1`, `#2`, ... when unnamed); `None` without blocks.
    pub name: Option<String>,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    pub tls: TlsSettings,
    pub identity: IdentityPolicy,
    /// Allow rules on the client certificate; reloaded from the file on SIGHUP.
    pub authz: Rules,
    pub limits: Limits,
    pub drain_timeout: Duration,
    /// Admin HTTP server address; `None` = off.
    pub admin: Option<SocketAddr>,
    pub upstream_check_interval: Duration,
    pub reload: ReloadSettings,
    pub log_level: String,
    pub log_format: LogFormat,
    /// PROXY protocol in (from a load balancer) and out (to the broker).
    pub proxy_protocol: ProxyProtocolSettings,
    /// Worker threads of the multi-thread runtime.
    pub threads: usize,
    /// How long to keep polling after traffic before sleeping; `None` = off.
    pub busy_poll: Option<Duration>,
}

impl Config {
    /// Merges a config file (if named) with the flags and validates the result.
    /// With `[[listener]]` blocks in the file, the first listener; use [`Config::load_all`] for all.
    pub fn load(args: &RunArgs) -> Result<Config, ConfigError> {
        Self::load_all(args)?.into_iter().next().ok_or(ConfigError::Missing { setting: "listener" })
    }

    /// One configuration per listener: each `[[listener]]` block laid over the file's top level, with
    /// the command line over both; without blocks, the top level is the one listener.
    pub fn load_all(args: &RunArgs) -> Result<Vec<Config>, ConfigError> {
        let file = match &args.config {
            Some(path) => Some((path.clone(), read_file(path)?)),
            None => None,
        };
        Self::merge_all(args, file)
    }

    fn merge_all(args: &RunArgs, file: Option<(PathBuf, FileConfig)>) -> Result<Vec<Config>, ConfigError> {
        let (path, f) = match file {
            Some((path, f)) if !f.listener.is_empty() => (path, f),
            other => return Ok(vec![Self::merge(args, other)?]),
        };
        let mut configs: Vec<Config> = Vec::with_capacity(f.listener.len());
        for (i, block) in f.listener.iter().enumerate() {
            let name = block.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let origin = Origin::Listener(path.clone(), name.clone());
            if configs.iter().any(|c| c.name.as_deref() == Some(name.as_str())) {
                return Err(ConfigError::Invalid {
                    setting: "name",
                    origin,
                    reason: "two listeners have this name".into(),
                });
            }
            let mut config = Self::merge_in(args, Some((path.clone(), f.with_listener(block))), Some(name.clone()))?;
            // Port 0 (any free port) can't clash.
            if let Some(other) = configs.iter().find(|c| c.listen == config.listen && c.listen.port() != 0) {
                return Err(ConfigError::Invalid {
                    setting: "listen",
                    origin,
                    reason: format!(
                        "{} is also the address of listener {}",
                        config.listen,
                        other.name.as_deref().unwrap_or_default()
                    ),
                });
            }
            config.name = Some(name);
            configs.push(config);
        }
        Ok(configs)
    }

    fn merge(args: &RunArgs, file: Option<(PathBuf, FileConfig)>) -> Result<Config, ConfigError> {
        Self::merge_in(args, file, None)
    }

    fn merge_in(
        args: &RunArgs,
        file: Option<(PathBuf, FileConfig)>,
        listener: Option<String>,
    ) -> Result<Config, ConfigError> {
        let (path, f) = match file {
            Some((p, f)) => (Some(p), f),
            None => (None, FileConfig::default()),
        };
        let origin_path = path.clone().unwrap_or_default();
        let file_origin = || match &listener {
            Some(name) => Origin::Listener(origin_path.clone(), name.clone()),
            None => Origin::File(origin_path.clone()),
        };
        // Relative paths in a file are relative to that file, so a config directory can be moved whole.
        let base = path.as_deref().and_then(Path::parent).map(Path::to_path_buf);
        let rel = |p: PathBuf| match &base {
            Some(b) if p.is_relative() => b.join(p),
            _ => p,
        };
        macro_rules! pick {
            ($name:ident) => {
                match (args.$name.clone(), f.$name.clone()) {
                    (Some(v), _) => Some((v, Origin::CommandLine)),
                    (None, Some(v)) => Some((v, file_origin())),
                    (None, None) => None,
                }
            };
        }
        let listen = match pick!(listen) {
            Some((s, origin)) => s.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid {
                setting: "listen",
                origin,
                reason: format!("{s:?} is not an IP:port address ({e})"),
            })?,
            None => SocketAddr::from(([0, 0, 0, 0], 8883)),
        };
        let upstream = match pick!(upstream) {
            Some((s, origin)) => s.parse::<Upstream>().map_err(|e| ConfigError::Invalid {
                setting: "upstream",
                origin,
                reason: e.to_string(),
            })?,
            None => Upstream::default(),
        };
        let path_setting =
            |setting: &'static str, v: Option<(PathBuf, Origin)>| -> Result<Option<PathBuf>, ConfigError> {
                match v {
                    Some((p, Origin::File(_) | Origin::Listener(..))) => Ok(Some(rel(p))),
                    Some((p, _)) if p.as_os_str().is_empty() => {
                        Err(ConfigError::Invalid { setting, origin: Origin::CommandLine, reason: "empty path".into() })
                    }
                    Some((p, _)) => Ok(Some(p)),
                    None => Ok(None),
                }
            };
        let cert = path_setting("cert", pick!(cert))?.ok_or(ConfigError::Missing { setting: "cert" })?;
        let key = path_setting("key", pick!(key))?.ok_or(ConfigError::Missing { setting: "key" })?;
        let client_ca = path_setting("client_ca", pick!(client_ca))?;
        let (client_auth, auth_origin) = pick!(client_auth).unwrap_or((ClientAuth::Required, Origin::Default));
        if client_auth != ClientAuth::None && client_ca.is_none() {
            return Err(ConfigError::Invalid {
                setting: "client_auth",
                origin: auth_origin,
                reason: format!(
                    "client_auth {} needs client_ca (the PEM bundle that signs client certificates); \
                     set client_ca or use client_auth none",
                    client_auth.as_str()
                ),
            });
        }
        let crls: Vec<PathBuf> =
            if !args.crl.is_empty() { args.crl.clone() } else { f.crl.iter().cloned().map(rel).collect() };
        if !crls.is_empty() && client_auth == ClientAuth::None {
            return Err(ConfigError::Invalid {
                setting: "crl",
                origin: if args.crl.is_empty() { file_origin() } else { Origin::CommandLine },
                reason: "CRLs only apply to client certificates, but client_auth is none".into(),
            });
        }
        let identity = IdentityPolicy {
            username_from: pick!(username_from).map(|v| v.0).unwrap_or_default(),
            client_username: pick!(client_username).map(|v| v.0).unwrap_or_default(),
            password: pick!(password).map(|v| v.0).unwrap_or_default(),
            client_id: pick!(client_id).map(|v| v.0).unwrap_or_default(),
        };
        let mut authz = Rules::default();
        for (kind, from_args, from_file) in [
            (RuleKind::Cn, &args.allow_cn, &f.allow_cn),
            (RuleKind::Ou, &args.allow_ou, &f.allow_ou),
            (RuleKind::Dns, &args.allow_dns, &f.allow_dns),
            (RuleKind::Uri, &args.allow_uri, &f.allow_uri),
            (RuleKind::Issuer, &args.allow_issuer, &f.allow_issuer),
        ] {
            // Like `crl`: patterns given as flags replace the file's list of that kind.
            let (patterns, origin) =
                if from_args.is_empty() { (from_file, file_origin()) } else { (from_args, Origin::CommandLine) };
            authz.set(kind, patterns).map_err(|e| ConfigError::Invalid {
                setting: kind.setting(),
                origin,
                reason: e.to_string(),
            })?;
        }
        let defaults = Limits::default();
        let duration = |setting: &'static str, v: Option<(String, Origin)>, default: Duration| match v {
            None => Ok(default),
            Some((s, origin)) => parse_duration(&s).map_err(|reason| ConfigError::Invalid { setting, origin, reason }),
        };
        let max_connect_size = match pick!(max_connect_size) {
            None => defaults.max_connect_size,
            Some((n, origin)) if !(16..=MQTT_MAX_REMAINING_LENGTH).contains(&n) => {
                return Err(ConfigError::Invalid {
                    setting: "max_connect_size",
                    origin,
                    reason: format!(
                        "{n} is outside 16..={} bytes (the MQTT maximum packet size)",
                        MQTT_MAX_REMAINING_LENGTH
                    ),
                })
            }
            Some((n, _)) => n,
        };
        let limits = Limits {
            handshake_timeout: duration("handshake_timeout", pick!(handshake_timeout), defaults.handshake_timeout)?,
            connect_timeout: duration("connect_timeout", pick!(connect_timeout), defaults.connect_timeout)?,
            max_connect_size,
            upstream_connect_timeout: duration(
                "upstream_connect_timeout",
                pick!(upstream_connect_timeout),
                defaults.upstream_connect_timeout,
            )?,
            connack_timeout: duration("connack_timeout", pick!(connack_timeout), defaults.connack_timeout)?,
            max_connections: at_least_one("max_connections", pick!(max_connections), defaults.max_connections)?,
            max_handshakes: at_least_one("max_handshakes", pick!(max_handshakes), defaults.max_handshakes)?,
            connect_buffer_budget: match pick!(connect_buffer_budget) {
                None => defaults.connect_buffer_budget.max(max_connect_size),
                Some((n, origin)) if n < max_connect_size => {
                    return Err(ConfigError::Invalid {
                        setting: "connect_buffer_budget",
                        origin,
                        reason: format!(
                            "{n} bytes is less than max_connect_size ({max_connect_size}): a CONNECT of that size \
                             could never be read"
                        ),
                    })
                }
                Some((n, _)) => n,
            },
        };
        let admin = match pick!(admin) {
            Some((s, origin)) => Some(s.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid {
                setting: "admin",
                origin,
                reason: format!("{s:?} is not an IP:port address ({e})"),
            })?),
            None => None,
        };
        let upstream_check_interval =
            duration("upstream_check_interval", pick!(upstream_check_interval), Duration::from_secs(5))?;
        if upstream_check_interval.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "upstream_check_interval",
                origin: pick!(upstream_check_interval).map(|v| v.1).unwrap_or(Origin::Default),
                reason: "must be longer than zero".into(),
            });
        }
        let drain_timeout = duration("drain_timeout", pick!(drain_timeout), Duration::from_secs(30))?;
        let interval = match pick!(reload_interval) {
            None => Some(DEFAULT_RELOAD_INTERVAL),
            Some((s, _)) if is_off(&s) => None,
            Some((s, origin)) => Some(parse_duration(&s).map_err(|reason| ConfigError::Invalid {
                setting: "reload_interval",
                origin,
                reason: format!("{reason}; use \"off\" to disable the re-check"),
            })?),
        };
        let debounce = match pick!(reload_debounce) {
            None => DEFAULT_RELOAD_DEBOUNCE,
            Some(v) => duration_at_most("reload_debounce", v, MAX_RELOAD_DEBOUNCE)?,
        };
        let refuse_expired = args.refuse_expired || f.refuse_expired.unwrap_or(false);
        let log_level = match pick!(log_level) {
            Some((s, origin)) => {
                tracing_subscriber::EnvFilter::try_new(&s).map_err(|e| ConfigError::Invalid {
                    setting: "log_level",
                    origin,
                    reason: format!("{s:?} is not a level or filter directive ({e})"),
                })?;
                s
            }
            None => "info".to_string(),
        };
        let proxy_protocol = proxy_protocol_settings(args, &f, &file_origin(), &identity)?;
        let (alpn_list, alpn_origin) =
            if args.alpn.is_empty() { (&f.alpn, file_origin()) } else { (&args.alpn, Origin::CommandLine) };
        let alpn = alpn_protocols(alpn_list, alpn_origin)?;
        let sni = f
            .sni
            .iter()
            .map(|entry| {
                Ok(SniCert {
                    names: sni_names(&entry.names, file_origin())?,
                    cert: rel(entry.cert.clone()),
                    key: rel(entry.key.clone()),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let threads = at_least_one("threads", pick!(threads), default_threads())?;
        let busy_poll = match pick!(busy_poll) {
            None => None,
            Some((s, _)) if is_off(&s) => None,
            Some(v) => Some(duration_at_most("busy_poll", v, MAX_BUSY_POLL)?),
        };
        Ok(Config {
            file: path,
            name: None,
            listen,
            upstream,
            tls: TlsSettings { cert, key, client_ca, client_auth, crls, refuse_expired, alpn, sni },
            identity,
            authz,
            limits,
            drain_timeout,
            admin,
            upstream_check_interval,
            reload: ReloadSettings { interval, debounce, watch: true },
            log_level,
            log_format: pick!(log_format).map(|v| v.0).unwrap_or_default(),
            proxy_protocol,
            threads,
            busy_poll,
        })
    }

    /// Where the settings came from, for messages: the file, or the command line.
    pub fn origin(&self) -> String {
        match &self.file {
            Some(p) => p.display().to_string(),
            None => "command line".to_string(),
        }
    }
}

/// ALPN protocol names: non-empty, at most 255 bytes (the TLS limit), no duplicates.
fn alpn_protocols(list: &[String], origin: Origin) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for p in list {
        let reason = if p.is_empty() || p.len() > 255 {
            format!("{p:?} is not an ALPN protocol name (1 to 255 bytes)")
        } else if out.contains(p) {
            format!("{p:?} is listed twice")
        } else {
            out.push(p.clone());
            continue;
        };
        return Err(ConfigError::Invalid { setting: "alpn", origin, reason });
    }
    Ok(out)
}

/// SNI names: DNS names, lower-cased; a wildcard only as the whole first label (`*.example.org`).
fn sni_names(names: &[String], origin: Origin) -> Result<Vec<String>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::Invalid { setting: "sni", origin, reason: "an entry has no names".into() });
    }
    names
        .iter()
        .map(|n| {
            let lower = n.trim_end_matches('.').to_ascii_lowercase();
            let rest = lower.strip_prefix("*.").unwrap_or(&lower);
            let ok = !rest.is_empty()
                && rest.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if ok {
                Ok(lower)
            } else {
                Err(ConfigError::Invalid {
                    setting: "sni",
                    origin: origin.clone(),
                    reason: format!("{n:?} is not a DNS name or a *.suffix wildcard"),
                })
            }
        })
        .collect()
}

/// The PROXY protocol settings, checked against each other and the identity policy.
fn proxy_protocol_settings(
    args: &RunArgs,
    f: &FileConfig,
    file_origin: &Origin,
    identity: &IdentityPolicy,
) -> Result<ProxyProtocolSettings, ConfigError> {
    let origin = |from_args: bool| if from_args { Origin::CommandLine } else { file_origin.clone() };
    let accept = args.accept_proxy_protocol || f.accept_proxy_protocol.unwrap_or(false);
    let accept_origin = origin(args.accept_proxy_protocol);
    let (ranges, ranges_origin) = if args.proxy_protocol_from.is_empty() {
        (&f.proxy_protocol_from, origin(false))
    } else {
        (&args.proxy_protocol_from, Origin::CommandLine)
    };
    let accept_from =
        ranges.iter().map(|r| proxy_protocol::parse_source_range(r)).collect::<Result<Vec<_>, _>>().map_err(
            |reason| ConfigError::Invalid { setting: "proxy_protocol_from", origin: ranges_origin.clone(), reason },
        )?;
    if accept && accept_from.is_empty() {
        return Err(ConfigError::Invalid {
            setting: "accept_proxy_protocol",
            origin: accept_origin,
            reason: "needs proxy_protocol_from: the source ranges of the load balancers that send PROXY headers \
                     (a header from anywhere else would let a client choose its own address)"
                .into(),
        });
    }
    if !accept && !accept_from.is_empty() {
        return Err(ConfigError::Invalid {
            setting: "proxy_protocol_from",
            origin: ranges_origin,
            reason: "has no effect unless accept_proxy_protocol is true".into(),
        });
    }
    let (upstream, _) = match (args.upstream_proxy_protocol, f.upstream_proxy_protocol) {
        (Some(v), _) => (v, Origin::CommandLine),
        (None, Some(v)) => (v, origin(false)),
        (None, None) => (UpstreamProxyProtocol::Off, Origin::Default),
    };
    let (rewrite_connect, rewrite_origin) = match (args.rewrite_connect, f.rewrite_connect) {
        (Some(v), _) => (v, Origin::CommandLine),
        (None, Some(v)) => (v, origin(false)),
        (None, None) => (true, Origin::Default),
    };
    if !rewrite_connect && upstream != UpstreamProxyProtocol::V2 {
        return Err(ConfigError::Invalid {
            setting: "rewrite_connect",
            origin: rewrite_origin,
            reason: format!(
                "false leaves the certificate identity to the PROXY v2 header, but upstream_proxy_protocol is {}; \
                 set upstream_proxy_protocol = \"v2\" (for a broker that reads it) or rewrite_connect = true",
                upstream.as_str()
            ),
        });
    }
    if !rewrite_connect && identity.username_from != UsernameFrom::Cn {
        return Err(ConfigError::Invalid {
            setting: "rewrite_connect",
            origin: rewrite_origin,
            reason: format!(
                "false leaves the identity to the PROXY v2 header, which carries the certificate CN only, \
                 but username_from is {}; use username_from = \"cn\" or rewrite_connect = true",
                identity.username_from
            ),
        });
    }
    if !rewrite_connect && identity.client_id == ClientIdPolicy::FromIdentity {
        return Err(ConfigError::Invalid {
            setting: "rewrite_connect",
            origin: rewrite_origin,
            reason: "false leaves the CONNECT untouched, so client_id = \"from-identity\" can't apply; \
                     use client_id = \"require-prefix\" or rewrite_connect = true"
                .into(),
        });
    }
    Ok(ProxyProtocolSettings { accept_from, upstream, rewrite_connect })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e| {
        // toml's Display spans several lines (it quotes the source); one line with the line number is
        // what a log or a terminal needs.
        let line = e.span().map(|span| text.get(..span.start).unwrap_or_default().matches('\n').count() + 1);
        let message = e.message().trim().replace('\n', " ");
        ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: match line {
                Some(n) => format!("line {n}: {message}"),
                None => message,
            },
        }
    })
}

/// The default worker count: one per CPU the process may run on (as tokio itself would choose).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn at_least_one(setting: &'static str, v: Option<(usize, Origin)>, default: usize) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some((0, origin)) => Err(ConfigError::Invalid { setting, origin, reason: "must be at least 1".into() }),
        Some((n, _)) => Ok(n),
    }
}

/// "off" or a zero duration ("0", "0s") turns a periodic task off.
fn is_off(s: &str) -> bool {
    let s = s.trim();
    s.eq_ignore_ascii_case("off") || s == "0" || parse_duration(s).is_ok_and(|d| d.is_zero())
}

/// A duration setting with an upper bound.
fn duration_at_most(
    setting: &'static str,
    (s, origin): (String, Origin),
    max: Duration,
) -> Result<Duration, ConfigError> {
    match parse_duration(&s) {
        Ok(d) if d <= max => Ok(d),
        Ok(d) => Err(ConfigError::Invalid {
            setting,
            origin,
            reason: format!(
                "{} is longer than the {} limit",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        }),
        Err(reason) => Err(ConfigError::Invalid { setting, origin, reason }),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 10s or 500ms ({e})"))
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
            ClientAuth::None => "none",
        }
    }
}

impl fmt::Display for Config {
    /// The effective settings, in the file's own syntax, so `mqtls check` output can seed a config file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        if let Some(name) = &self.name {
            writeln!(f, "# listener {name}")?;
        }
        writeln!(f, "listen = \"{}\"", self.listen)?;
        writeln!(f, "upstream = \"{}\"", self.upstream)?;
        let pp = &self.proxy_protocol;
        writeln!(f, "upstream_proxy_protocol = \"{}\"", pp.upstream.as_str())?;
        writeln!(f, "rewrite_connect = {}", pp.rewrite_connect)?;
        writeln!(f, "accept_proxy_protocol = {}", pp.accepts())?;
        let ranges: Vec<String> = pp.accept_from.iter().map(|r| format!("\"{r}\"")).collect();
        writeln!(f, "proxy_protocol_from = [{}]", ranges.join(", "))?;
        writeln!(f, "cert = {}", q(&self.tls.cert))?;
        writeln!(f, "key = {}", q(&self.tls.key))?;
        if let Some(ca) = &self.tls.client_ca {
            writeln!(f, "client_ca = {}", q(ca))?;
        }
        writeln!(f, "client_auth = \"{}\"", self.tls.client_auth.as_str())?;
        let alpn: Vec<String> = self.tls.alpn.iter().map(|p| format!("{p:?}")).collect();
        writeln!(f, "alpn = [{}]", alpn.join(", "))?;
        let crls: Vec<String> = self.tls.crls.iter().map(|p| q(p)).collect();
        writeln!(f, "crl = [{}]", crls.join(", "))?;
        writeln!(f, "username_from = \"{}\"", self.identity.username_from.as_str())?;
        let cu = match self.identity.client_username {
            ClientUsername::Overwrite => "overwrite",
            ClientUsername::Reject => "reject",
        };
        writeln!(f, "client_username = \"{cu}\"")?;
        let pw = match self.identity.password {
            PasswordPolicy::Drop => "drop",
            PasswordPolicy::Keep => "keep",
        };
        writeln!(f, "password = \"{pw}\"")?;
        writeln!(f, "client_id = \"{}\"", self.identity.client_id.as_str())?;
        writeln!(f, "{}", self.authz)?;
        writeln!(f, "log_level = {:?}", self.log_level)?;
        let lf = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        writeln!(f, "log_format = \"{lf}\"")?;
        let d = |d: Duration| humantime::format_duration(d).to_string();
        writeln!(f, "handshake_timeout = \"{}\"", d(self.limits.handshake_timeout))?;
        writeln!(f, "connect_timeout = \"{}\"", d(self.limits.connect_timeout))?;
        writeln!(f, "max_connect_size = {}", self.limits.max_connect_size)?;
        writeln!(f, "connect_buffer_budget = {}", self.limits.connect_buffer_budget)?;
        writeln!(f, "upstream_connect_timeout = \"{}\"", d(self.limits.upstream_connect_timeout))?;
        writeln!(f, "connack_timeout = \"{}\"", d(self.limits.connack_timeout))?;
        writeln!(f, "max_connections = {}", self.limits.max_connections)?;
        writeln!(f, "max_handshakes = {}", self.limits.max_handshakes)?;
        if let Some(admin) = self.admin {
            writeln!(f, "admin = \"{admin}\"")?;
        }
        writeln!(f, "upstream_check_interval = \"{}\"", d(self.upstream_check_interval))?;
        writeln!(f, "drain_timeout = \"{}\"", d(self.drain_timeout))?;
        match self.reload.interval {
            Some(i) => writeln!(f, "reload_interval = \"{}\"", d(i))?,
            None => writeln!(f, "reload_interval = \"off\"")?,
        }
        writeln!(f, "reload_debounce = \"{}\"", d(self.reload.debounce))?;
        writeln!(f, "threads = {}", self.threads)?;
        match self.busy_poll {
            Some(w) => writeln!(f, "busy_poll = \"{}\"", d(w))?,
            None => writeln!(f, "busy_poll = \"off\"")?,
        }
        write!(f, "refuse_expired = {}", self.tls.refuse_expired)?;
        // Tables last: every key after a [[sni]] header would belong to it.
        for sni in &self.tls.sni {
            let names: Vec<String> = sni.names.iter().map(|n| format!("{n:?}")).collect();
            write!(f, "\n\n[[sni]]\nnames = [{}]\ncert = {}\nkey = {}", names.join(", "), q(&sni.cert), q(&sni.key))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> RunArgs {
        let mut v = vec!["mqtls"];
        v.extend_from_slice(list);
        Cli::parse_from(v).run
    }

    fn file(toml_text: &str) -> Option<(PathBuf, FileConfig)> {
        Some((PathBuf::from("/etc/mqtls/mqtls.toml"), toml::from_str(toml_text).expect("valid toml")))
    }

    #[test]
    fn flags_override_file_values() {
        let cfg = Config::merge(
            &args(&["--listen", "127.0.0.1:9999", "--client-auth", "none"]),
            file("listen = \"127.0.0.1:1\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"broker:1884\""),
        )
        .expect("valid");
        assert_eq!(cfg.listen.port(), 9999);
        assert_eq!(cfg.upstream.to_string(), "broker:1884");
    }

    #[test]
    fn relative_paths_in_a_file_resolve_against_its_directory() {
        let cfg = Config::merge(&args(&["--client-auth", "none"]), file("cert = \"c.pem\"\nkey = \"/abs/k.pem\""))
            .expect("valid");
        assert_eq!(cfg.tls.cert, PathBuf::from("/etc/mqtls/c.pem"));
        assert_eq!(cfg.tls.key, PathBuf::from("/abs/k.pem"));
    }

    #[test]
    fn defaults_match_the_documentation() {
        let cfg = Config::merge(&args(&["--cert", "c", "--key", "k", "--client-ca", "ca"]), None).expect("valid");
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8883");
        assert_eq!(cfg.upstream.to_string(), "127.0.0.1:1883");
        assert_eq!(cfg.tls.client_auth, ClientAuth::Required);
        assert_eq!(cfg.identity.username_from, UsernameFrom::Cn);
        assert_eq!(cfg.identity.password, PasswordPolicy::Drop);
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.drain_timeout, Duration::from_secs(30));
        assert_eq!(cfg.reload.interval, Some(Duration::from_secs(60)));
        assert_eq!(cfg.reload.debounce, Duration::from_millis(200));
        assert!(!cfg.tls.refuse_expired);
        assert_eq!(cfg.threads, default_threads());
        assert_eq!(cfg.busy_poll, None);
    }

    #[test]
    fn busy_poll_is_a_bounded_duration_or_off() {
        let cfg = Config::merge(&args(&base()), file("busy_poll = \"200us\"")).expect("valid");
        assert_eq!(cfg.busy_poll, Some(Duration::from_micros(200)));
        assert!(cfg.to_string().contains("busy_poll = \"200us\""), "{cfg}");
        let mut a = base();
        a.extend(["--busy-poll", "off"]);
        assert_eq!(Config::merge(&args(&a), file("busy_poll = \"1ms\"")).expect("valid").busy_poll, None);
        assert_eq!(Config::merge(&args(&base()), file("busy_poll = \"0\"")).expect("valid").busy_poll, None);
        let err = Config::merge(&args(&base()), file("busy_poll = \"1s\"")).expect_err("too long");
        assert!(err.to_string().starts_with("busy_poll (in /etc/mqtls/mqtls.toml)"), "{err}");
        assert!(err.to_string().contains("10ms limit"), "{err}");
        let err = Config::merge(&args(&base()), file("busy_poll = \"fast\"")).expect_err("not a duration");
        assert!(err.to_string().starts_with("busy_poll (in /etc/mqtls/mqtls.toml)"), "{err}");
    }

    #[test]
    fn threads_come_from_flag_or_file_and_must_be_positive() {
        let cfg = Config::merge(&args(&base()), file("threads = 3")).expect("valid");
        assert_eq!(cfg.threads, 3);
        let mut a = base();
        a.extend(["--threads", "1"]);
        assert_eq!(Config::merge(&args(&a), file("threads = 3")).expect("valid").threads, 1);
        assert!(Config::merge(&args(&base()), file("threads = 0")).is_err());
        let text = Config::merge(&args(&a), None).expect("valid").to_string();
        assert!(text.contains("threads = 1"), "{text}");
    }

    #[test]
    fn unknown_file_key_is_an_error_naming_the_key() {
        let err = toml::from_str::<FileConfig>("lissen = \"x\"").expect_err("must fail");
        assert!(err.to_string().contains("lissen"), "{err}");
    }

    #[test]
    fn bad_address_error_names_setting_and_file() {
        let err =
            Config::merge(&args(&[]), file("listen = \"nonsense\"\ncert=\"c\"\nkey=\"k\"")).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("listen (in /etc/mqtls/mqtls.toml)"), "{msg}");
    }

    #[test]
    fn required_client_auth_without_client_ca_is_an_error() {
        let err = Config::merge(&args(&["--cert", "c", "--key", "k"]), None).expect_err("must fail");
        assert!(err.to_string().contains("client_ca"), "{err}");
    }

    #[test]
    fn missing_cert_names_the_flag() {
        let err = Config::merge(&args(&["--key", "k", "--client-auth", "none"]), None).expect_err("must fail");
        assert_eq!(err.to_string(), "cert is required (set it in the config file or with --cert)");
    }

    #[test]
    fn durations_accept_human_units() {
        let cfg = Config::merge(
            &args(&["--cert", "c", "--key", "k", "--client-auth", "none", "--handshake-timeout", "1500ms"]),
            None,
        )
        .expect("valid");
        assert_eq!(cfg.limits.handshake_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn check_output_parses_back_as_a_config_file() {
        let cfg = Config::merge(&args(&["--cert", "c", "--key", "k", "--client-ca", "ca", "--crl", "r.pem"]), None)
            .expect("valid");
        let text = cfg.to_string();
        let back: FileConfig = toml::from_str(&text).expect("check output is valid config");
        assert_eq!(back.crl, vec![PathBuf::from("r.pem")]);
    }

    fn base() -> Vec<&'static str> {
        vec!["--cert", "c", "--key", "k", "--client-auth", "none"]
    }

    #[test]
    fn reload_interval_off_or_zero_disables_the_recheck() {
        for off in ["off", "0", "0s", "OFF"] {
            let mut a = base();
            a.extend(["--reload-interval", off]);
            assert_eq!(Config::merge(&args(&a), None).expect("valid").reload.interval, None, "{off}");
        }
    }

    #[test]
    fn reload_settings_are_read_from_the_file() {
        let cfg = Config::merge(
            &args(&base()),
            file("reload_interval = \"5m\"\nreload_debounce = \"50ms\"\nrefuse_expired = true"),
        )
        .expect("valid");
        assert_eq!(cfg.reload.interval, Some(Duration::from_secs(300)));
        assert_eq!(cfg.reload.debounce, Duration::from_millis(50));
        assert!(cfg.tls.refuse_expired);
    }

    #[test]
    fn refuse_expired_flag_overrides_the_file_default() {
        let mut a = base();
        a.push("--refuse-expired");
        assert!(Config::merge(&args(&a), None).expect("valid").tls.refuse_expired);
    }

    #[test]
    fn bad_reload_interval_names_the_setting_and_file() {
        let err = Config::merge(&args(&base()), file("reload_interval = \"soon\"")).expect_err("must fail");
        assert!(err.to_string().starts_with("reload_interval (in /etc/mqtls/mqtls.toml)"), "{err}");
    }

    #[test]
    fn overlong_reload_debounce_is_an_error_naming_the_setting() {
        let mut a = base();
        a.extend(["--reload-debounce", "5m"]);
        let err = Config::merge(&args(&a), None).expect_err("must fail");
        assert!(err.to_string().starts_with("reload_debounce (in command line)"), "{err}");
    }

    #[test]
    fn allow_rules_and_client_id_are_read_from_the_file() {
        let cfg = Config::merge(
            &args(&base()),
            file("allow_cn = [\"device-*\", \"gw-?\"]\nallow_uri = [\"spiffe://example.org/sensors/*\"]\nclient_id = \"from-identity\""),
        )
        .expect("valid");
        assert_eq!(cfg.authz.patterns(RuleKind::Cn), ["device-*", "gw-?"]);
        assert_eq!(cfg.authz.patterns(RuleKind::Uri), ["spiffe://example.org/sensors/*"]);
        assert!(cfg.authz.patterns(RuleKind::Issuer).is_empty());
        assert_eq!(cfg.identity.client_id, ClientIdPolicy::FromIdentity);
    }

    #[test]
    fn allow_flags_replace_the_file_list_of_their_kind_only() {
        let mut a = base();
        a.extend(["--allow-cn", "a", "--allow-cn", "b", "--client-id", "require-prefix"]);
        let cfg = Config::merge(&args(&a), file("allow_cn = [\"file\"]\nallow_ou = [\"Fleet\"]")).expect("valid");
        assert_eq!(cfg.authz.patterns(RuleKind::Cn), ["a", "b"]);
        assert_eq!(cfg.authz.patterns(RuleKind::Ou), ["Fleet"]);
        assert_eq!(cfg.identity.client_id, ClientIdPolicy::RequirePrefix);
    }

    #[test]
    fn no_allow_rules_and_keep_are_the_defaults() {
        let cfg = Config::merge(&args(&base()), None).expect("valid");
        assert!(cfg.authz.is_empty());
        assert_eq!(cfg.identity.client_id, ClientIdPolicy::Keep);
    }

    #[test]
    fn bad_allow_glob_names_the_setting_and_file() {
        let err = Config::merge(&args(&base()), file("allow_issuer = [\"CN=[\"]")).expect_err("must fail");
        assert!(
            err.to_string().starts_with("allow_issuer (in /etc/mqtls/mqtls.toml): \"CN=[\" is not a valid glob"),
            "{err}"
        );
        let mut a = base();
        a.extend(["--allow-dns", ""]);
        let err = Config::merge(&args(&a), None).expect_err("must fail");
        assert!(err.to_string().starts_with("allow_dns (in command line)"), "{err}");
    }

    #[test]
    fn check_output_round_trips_allow_rules_and_client_id() {
        let mut a = base();
        a.extend(["--allow-uri", "spiffe://x/*", "--allow-cn", r#"say "hi"\*"#, "--client-id", "from-identity"]);
        let cfg = Config::merge(&args(&a), None).expect("valid");
        let back = Config::merge(
            &args(&[]),
            Some((PathBuf::from("/x/m.toml"), toml::from_str(&cfg.to_string()).expect("toml"))),
        )
        .expect("valid");
        assert_eq!(back.authz, cfg.authz);
        assert_eq!(back.identity.client_id, ClientIdPolicy::FromIdentity);
    }

    #[test]
    fn check_output_round_trips_the_reload_settings() {
        let mut a = base();
        a.extend(["--reload-interval", "off", "--reload-debounce", "300ms", "--refuse-expired"]);
        let text = Config::merge(&args(&a), None).expect("valid").to_string();
        let back = Config::merge(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(&text).expect("toml"))))
            .expect("valid");
        assert_eq!(back.reload.interval, None);
        assert_eq!(back.reload.debounce, Duration::from_millis(300));
        assert!(back.tls.refuse_expired);
    }
    const TWO_LISTENERS: &str = r#"
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
upstream = "broker:1883"
alpn = ["mqtt"]

[[sni]]
names = ["A.example.org", "*.b.example.org"]
cert = "a.pem"
key = "a.key"

[[listener]]
name = "certs"
listen = "127.0.0.1:8883"

[[listener]]
listen = "127.0.0.1:8884"
client_auth = "optional"
upstream = "other:1884"
allow_cn = ["dev-*"]
alpn = []
sni = []
"#;

    #[test]
    fn listener_blocks_inherit_the_top_level_and_override_it() {
        let all = Config::merge_all(&args(&[]), file(TWO_LISTENERS)).expect("valid");
        assert_eq!(all.len(), 2);
        let (a, b) = (&all[0], &all[1]);
        assert_eq!((a.name.as_deref(), b.name.as_deref()), (Some("certs"), Some("#2")));
        assert_eq!((a.listen.port(), b.listen.port()), (8883, 8884));
        assert_eq!(a.upstream.to_string(), "broker:1883");
        assert_eq!(b.upstream.to_string(), "other:1884");
        assert_eq!((a.tls.client_auth, b.tls.client_auth), (ClientAuth::Required, ClientAuth::Optional));
        assert_eq!(b.tls.cert, PathBuf::from("/etc/mqtls/c.pem"), "inherited, relative to the file");
        assert!(a.authz.is_empty());
        assert_eq!(b.authz.patterns(RuleKind::Cn), ["dev-*"]);
        assert_eq!(a.tls.alpn, ["mqtt"]);
        assert!(b.tls.alpn.is_empty(), "an empty list in a block turns ALPN off");
        assert_eq!(a.tls.sni.len(), 1);
        assert_eq!(a.tls.sni[0].names, ["a.example.org", "*.b.example.org"], "lower-cased");
        assert_eq!(a.tls.sni[0].cert, PathBuf::from("/etc/mqtls/a.pem"));
        assert!(b.tls.sni.is_empty());
    }

    #[test]
    fn command_line_listener_flags_apply_to_every_listener() {
        let all = Config::merge_all(&args(&["--upstream", "flag:1", "--alpn", "x-amzn-mqtt-ca"]), file(TWO_LISTENERS))
            .expect("valid");
        assert!(all.iter().all(|c| c.upstream.to_string() == "flag:1" && c.tls.alpn == ["x-amzn-mqtt-ca"]));
    }

    #[test]
    fn without_listener_blocks_the_top_level_is_the_one_listener() {
        let all = Config::merge_all(&args(&base()), file("listen = \"127.0.0.1:1\"")).expect("valid");
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, None);
        assert_eq!(all[0].listen.port(), 1);
    }

    #[test]
    fn a_global_key_in_a_listener_block_is_an_error_naming_it() {
        let err = toml::from_str::<FileConfig>("[[listener]]\nlisten = \"127.0.0.1:1\"\ndrain_timeout = \"1s\"")
            .expect_err("must fail");
        assert!(err.to_string().contains("drain_timeout"), "{err}");
    }

    #[test]
    fn listener_errors_name_the_setting_the_file_and_the_listener() {
        let text = format!("{TWO_LISTENERS}\n[[listener]]\nname = \"dup\"\nlisten = \"127.0.0.1:8884\"\n");
        let err = Config::merge_all(&args(&[]), file(&text)).expect_err("same address");
        let msg = err.to_string();
        assert!(msg.starts_with("listen (in /etc/mqtls/mqtls.toml, listener dup)"), "{msg}");
        assert!(msg.contains("listener #2"), "{msg}");

        let text = TWO_LISTENERS.replace("upstream = \"other:1884\"", "upstream = \"other\"");
        let err = Config::merge_all(&args(&[]), file(&text)).expect_err("bad upstream");
        assert!(err.to_string().starts_with("upstream (in /etc/mqtls/mqtls.toml, listener #2)"), "{err}");

        let text = TWO_LISTENERS.replace("alpn = []", "alpn = [\"\"]");
        let err = Config::merge_all(&args(&[]), file(&text)).expect_err("bad alpn");
        assert!(err.to_string().starts_with("alpn (in /etc/mqtls/mqtls.toml, listener #2)"), "{err}");

        let text = TWO_LISTENERS.replace("*.b.example.org", "a.*.org");
        let err = Config::merge_all(&args(&[]), file(&text)).expect_err("bad sni name");
        assert!(err.to_string().starts_with("sni (in /etc/mqtls/mqtls.toml, listener certs)"), "{err}");
    }

    #[test]
    fn check_output_round_trips_alpn_and_sni() {
        let all = Config::merge_all(&args(&[]), file(TWO_LISTENERS)).expect("valid");
        let text = all[0].to_string();
        let back = Config::merge(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(&text).expect("toml"))))
            .expect("valid");
        assert_eq!(back.tls.alpn, all[0].tls.alpn);
        assert_eq!(back.tls.sni, all[0].tls.sni);
    }

    #[test]
    fn proxy_protocol_is_off_by_default() {
        let cfg = Config::merge(&args(&base()), None).expect("valid");
        assert_eq!(cfg.proxy_protocol, ProxyProtocolSettings::default());
        assert_eq!(cfg.proxy_protocol.upstream, UpstreamProxyProtocol::Off);
        assert!(cfg.proxy_protocol.rewrite_connect);
        assert!(!cfg.proxy_protocol.accepts());
    }

    #[test]
    fn proxy_protocol_settings_are_read_from_the_file_and_round_trip_through_check() {
        let cfg = Config::merge(
            &args(&base()),
            file(
                "accept_proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.1\"]\n\
                 upstream_proxy_protocol = \"v2\"\nrewrite_connect = false",
            ),
        )
        .expect("valid");
        let pp = &cfg.proxy_protocol;
        assert_eq!(pp.upstream, UpstreamProxyProtocol::V2);
        assert!(!pp.rewrite_connect);
        assert!(pp.trusts("10.9.8.7".parse().expect("ip")) && pp.trusts("192.0.2.1".parse().expect("ip")));
        assert!(!pp.trusts("192.0.2.2".parse().expect("ip")));
        let text = cfg.to_string();
        let back = Config::merge(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(&text).expect("toml"))))
            .expect("valid");
        assert_eq!(back.proxy_protocol, cfg.proxy_protocol);
    }

    #[test]
    fn proxy_protocol_flags_override_the_file() {
        let mut a = base();
        a.extend([
            "--accept-proxy-protocol",
            "--proxy-protocol-from",
            "172.16.0.0/12",
            "--upstream-proxy-protocol",
            "v1",
        ]);
        let cfg = Config::merge(&args(&a), file("upstream_proxy_protocol = \"v2\"")).expect("valid");
        assert_eq!(cfg.proxy_protocol.upstream, UpstreamProxyProtocol::V1);
        assert_eq!(cfg.proxy_protocol.accept_from, vec!["172.16.0.0/12".parse::<ipnet::IpNet>().expect("net")]);
    }

    #[test]
    fn accept_proxy_protocol_without_sources_is_an_error_naming_the_setting_and_file() {
        let err = Config::merge(&args(&base()), file("accept_proxy_protocol = true")).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("accept_proxy_protocol (in /etc/mqtls/mqtls.toml)"), "{msg}");
        assert!(msg.contains("proxy_protocol_from"), "{msg}");
    }

    #[test]
    fn proxy_protocol_sources_without_accept_are_an_error() {
        let mut a = base();
        a.extend(["--proxy-protocol-from", "10.0.0.0/8"]);
        let err = Config::merge(&args(&a), None).expect_err("must fail");
        assert!(err.to_string().starts_with("proxy_protocol_from (in command line)"), "{err}");
    }

    #[test]
    fn a_bad_source_range_names_the_setting_and_the_value() {
        let err = Config::merge(
            &args(&base()),
            file("accept_proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"10.0.0.0/40\"]"),
        )
        .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.starts_with("proxy_protocol_from (in /etc/mqtls/mqtls.toml)"), "{msg}");
        assert!(msg.contains("\"10.0.0.0/40\""), "{msg}");
    }

    #[test]
    fn rewrite_connect_off_needs_the_v2_header_and_the_cn() {
        let mut a = base();
        a.extend(["--rewrite-connect", "false"]);
        let err = Config::merge(&args(&a), None).expect_err("no header");
        assert!(err.to_string().starts_with("rewrite_connect (in command line)"), "{err}");
        assert!(err.to_string().contains("upstream_proxy_protocol"), "{err}");

        a.extend(["--upstream-proxy-protocol", "v1"]);
        assert!(Config::merge(&args(&a), None).is_err(), "v1 carries no identity");

        let err = Config::merge(&args(&a), file("upstream_proxy_protocol = \"v2\"\nusername_from = \"subject\""));
        assert!(err.is_err(), "v1 from the command line wins");
        let mut b = base();
        b.extend(["--rewrite-connect", "false", "--upstream-proxy-protocol", "v2", "--username-from", "subject"]);
        let err = Config::merge(&args(&b), None).expect_err("subject can't travel in the header");
        assert!(err.to_string().contains("username_from is subject"), "{err}");

        let mut ok = base();
        ok.extend(["--rewrite-connect", "false", "--upstream-proxy-protocol", "v2"]);
        assert!(!Config::merge(&args(&ok), None).expect("valid").proxy_protocol.rewrite_connect);
    }
}
