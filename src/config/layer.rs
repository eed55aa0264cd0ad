//! Every setting, declared once.
//!
//! The [`settings!`] invocation below is the only place a setting is named: it becomes a field of
//! [`Layer`] — a flag (clap) and a key of the file's top level (serde) — and, for the per-listener
//! settings, of [`Block`], a `[[listener]]` block. A global key inside a block is an unknown field
//! there, so the file's error names it. Layers stack with [`Layer::over`] (flag → block → top level →
//! default), and [`Layer::set`] names what a layer sets, which is where an error says a value came from.

use std::path::PathBuf;

use crate::conn::proxy_protocol::UpstreamProxyProtocol;
use crate::conn::websocket::ListenerProtocol;
use crate::crl::CrlStale;
use crate::ops::logging::LogFormat;
use crate::tls::{ClientAuth, SniCert};
use crate::x509::identity::UsernameFrom;
use crate::x509::policy::{ClientIdPolicy, ClientUsername, PasswordPolicy};

/// Declares the settings: a `listener` group (allowed in `[[listener]]` blocks) and a `global` group
/// (the top level and the command line only). Each entry: doc comments (the `--help` text), one
/// `#[arg(...)]`, `name: Option<Type>`.
macro_rules! settings {
    (
        listener { $( $(#[doc = $ldoc:literal])* #[arg($($larg:tt)*)] $lname:ident : $lty:ty, )* }
        global { $( $(#[doc = $gdoc:literal])* #[arg($($garg:tt)*)] $gname:ident : $gty:ty, )* }
    ) => {
        /// The settings one source gives: the command line, or the file's top level. Every field is
        /// optional, so a layer names only what it sets.
        #[derive(Debug, Default, Clone, clap::Args, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct Layer {
            $(
                $(#[doc = $ldoc])* #[arg($($larg)*)]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $lname: $lty,
            )*
            $(
                $(#[doc = $gdoc])* #[arg($($garg)*)]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $gname: $gty,
            )*
            /// `[[listener]]` blocks; without any, the top level is the one listener (file only).
            #[arg(skip)]
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub listener: Vec<Block>,
        }

        /// One `[[listener]]` block: a name and the per-listener settings. Each one it leaves out is
        /// inherited from the top level.
        #[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields)]
        pub struct Block {
            /// For log lines and error messages; defaults to `#1`, `#2`, ... in file order.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            $(
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $lname: $lty,
            )*
        }

        impl Layer {
            /// `self` laid over `lower`: every setting `self` leaves out comes from `lower`.
            pub(crate) fn over(self, lower: Layer) -> Layer {
                Layer {
                    $( $lname: self.$lname.or(lower.$lname), )*
                    $( $gname: self.$gname.or(lower.$gname), )*
                    listener: Vec::new(),
                }
            }

            /// A block's settings as a layer (no global ones).
            pub(crate) fn from_block(block: Block) -> Layer {
                Layer { $( $lname: block.$lname, )* ..Layer::default() }
            }

            /// The names of the settings this layer sets.
            pub(crate) fn set(&self) -> Vec<&'static str> {
                let mut names = Vec::new();
                $( if self.$lname.is_some() { names.push(stringify!($lname)); } )*
                $( if self.$gname.is_some() { names.push(stringify!($gname)); } )*
                names
            }
        }
    };
}

settings! {
    listener {
        /// Address to accept MQTT-over-TLS connections on [default: 0.0.0.0:8883].
        #[arg(long)]
        listen: Option<String>,
        /// Bind `listen` with SO_REUSEPORT, so a new mqtls can start on the same address while this one
        /// drains (an upgrade without refused connections) [default: false].
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        reuse_port: Option<bool>,
        /// Broker address: host:port (resolved at each connect) or unix:/path [default: 127.0.0.1:1883].
        #[arg(long)]
        upstream: Option<String>,
        /// PEM file with the server certificate chain, leaf first.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// PEM file with the server private key (PKCS#8, PKCS#1 or SEC1).
        #[arg(long)]
        key: Option<PathBuf>,
        /// DER OCSP response for the server certificate (cert, not the SNI ones), stapled until its
        /// nextUpdate and reloaded with the certificate.
        #[arg(long)]
        ocsp_staple: Option<PathBuf>,
        /// File of session-ticket keys shared by replicas, so any replica resumes another's tickets: one
        /// line per key, 80 random bytes in base64; the first seals, all open [default: keys of this
        /// process alone].
        #[arg(long)]
        ticket_keys: Option<PathBuf>,
        /// PEM bundle of CAs that sign client certificates.
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// required | optional | none [default: required].
        #[arg(long, value_enum)]
        client_auth: Option<ClientAuth>,
        /// PEM file of certificate revocation lists (repeatable).
        #[arg(long = "crl")]
        crl: Option<Vec<PathBuf>>,
        /// http:// URL of a certificate revocation list to fetch and refetch (repeatable).
        #[arg(long = "crl-url", value_name = "URL")]
        crl_urls: Option<Vec<String>>,
        /// Also fetch the http:// CRL distribution points of the client CA certificates and of client
        /// certificates seen [default: false].
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        crl_from_distribution_points: Option<bool>,
        /// How often fetched CRLs are refetched (sooner before a CRL's nextUpdate) [default: 15m].
        #[arg(long)]
        crl_refresh: Option<String>,
        /// keep | refuse: past a CRL's nextUpdate, keep checking against it, or refuse that issuer's
        /// certificates [default: keep].
        #[arg(long, value_enum)]
        crl_stale: Option<CrlStale>,
        /// Time one CRL fetch may take, connect to last byte [default: 10s].
        #[arg(long)]
        crl_fetch_timeout: Option<String>,
        /// Largest CRL fetched, in bytes [default: 10485760].
        #[arg(long)]
        crl_max_size: Option<usize>,
        /// When client trust changes (CA bundle, CRL, allow rules), each established connection re-checks its
        /// certificate at a random moment within this window and closes if refused; "0" re-checks all at once
        /// [default: 1m].
        #[arg(long)]
        recheck_spread: Option<String>,
        /// Close a connection when its client certificate expires [default: true].
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        close_at_cert_expiry: Option<bool>,
        /// Close every connection after about this long (less up to a tenth, at random), so devices
        /// re-prove themselves; "off" disables [default: off].
        #[arg(long)]
        max_conn_lifetime: Option<String>,
        /// Certificate field that becomes the MQTT username [default: cn].
        #[arg(long, value_enum)]
        username_from: Option<UsernameFrom>,
        /// overwrite | reject a client-supplied username [default: overwrite].
        #[arg(long, value_enum)]
        client_username: Option<ClientUsername>,
        /// drop | keep the client's password when the username comes from the certificate [default: drop].
        #[arg(long, value_enum)]
        password: Option<PasswordPolicy>,
        /// keep | from-identity | require-prefix: the client id of a client with a certificate [default: keep].
        #[arg(long, value_enum)]
        client_id: Option<ClientIdPolicy>,
        /// Admit certificates whose subject CN matches this glob (repeatable; any allow rule matching admits).
        #[arg(long = "allow-cn", value_name = "GLOB")]
        allow_cn: Option<Vec<String>>,
        /// Admit certificates with a subject OU matching this glob (repeatable).
        #[arg(long = "allow-ou", value_name = "GLOB")]
        allow_ou: Option<Vec<String>>,
        /// Admit certificates with a DNS subjectAltName matching this glob (repeatable).
        #[arg(long = "allow-dns", value_name = "GLOB")]
        allow_dns: Option<Vec<String>>,
        /// Admit certificates with a URI subjectAltName matching this glob; `*` stays within a path segment (repeatable).
        #[arg(long = "allow-uri", value_name = "GLOB")]
        allow_uri: Option<Vec<String>>,
        /// Admit certificates whose issuer DN (RFC 2253, e.g. "CN=Device CA,O=Acme") matches this glob (repeatable).
        #[arg(long = "allow-issuer", value_name = "GLOB")]
        allow_issuer: Option<Vec<String>>,
        /// PROXY protocol header written to the broker before the CONNECT: off | v1 | v2 [default: off].
        #[arg(long, value_enum)]
        upstream_proxy_protocol: Option<UpstreamProxyProtocol>,
        /// true | false: write the certificate identity into the CONNECT's username. false passes the
        /// CONNECT unchanged and leaves the identity to the PROXY v2 header's CN [default: true].
        #[arg(long)]
        rewrite_connect: Option<bool>,
        /// Read a PROXY protocol v1/v2 header before the TLS handshake, from proxy_protocol_from sources.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        accept_proxy_protocol: Option<bool>,
        /// Source range (CIDR or address) whose connections must start with a PROXY header (repeatable).
        #[arg(long = "proxy-protocol-from")]
        proxy_protocol_from: Option<Vec<String>>,
        /// ALPN protocol offered in the handshake, e.g. mqtt or x-amzn-mqtt-ca (repeatable); none = no ALPN.
        #[arg(long = "alpn", value_name = "PROTOCOL")]
        alpn: Option<Vec<String>>,
        /// mqtt | websockets: MQTT directly over TLS, or MQTT over secure WebSockets (wss://) for browsers
        /// and devices limited to HTTPS [default: mqtt].
        #[arg(long, value_enum)]
        protocol: Option<ListenerProtocol>,
        /// Path the WebSocket upgrade is served on (protocol websockets) [default: /mqtt].
        #[arg(long)]
        ws_path: Option<String>,
        /// Browser Origin allowed to open a WebSocket, a glob such as https://*.example.org (repeatable);
        /// none = any origin (protocol websockets).
        #[arg(long = "ws-allowed-origin", value_name = "GLOB")]
        ws_allowed_origins: Option<Vec<String>>,
        /// Largest WebSocket message or frame a client may send, in bytes (protocol websockets)
        /// [default: 1048576].
        #[arg(long)]
        ws_max_message_size: Option<usize>,
        /// Certificates chosen by the name the client sends (SNI), as `[[sni]]` tables (file only).
        #[arg(skip)]
        sni: Option<Vec<SniCert>>,
    }
    global {
        /// Log filter: a level (info, debug, ...) or RUST_LOG-style directives [default: info].
        #[arg(long)]
        log_level: Option<String>,
        /// text | json [default: text].
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Time allowed for the TLS handshake, e.g. 10s [default: 10s].
        #[arg(long)]
        handshake_timeout: Option<String>,
        /// Time allowed for the CONNECT packet after the handshake [default: 10s].
        #[arg(long)]
        connect_timeout: Option<String>,
        /// Largest CONNECT accepted, in bytes [default: 262144].
        #[arg(long)]
        max_connect_size: Option<usize>,
        /// Bytes all CONNECTs being read may hold together beyond 4 KiB each; past it a CONNECT is refused
        /// ("server busy") [default: 33554432].
        #[arg(long)]
        connect_buffer_budget: Option<usize>,
        /// Time allowed to connect to the broker [default: 5s].
        #[arg(long)]
        upstream_connect_timeout: Option<String>,
        /// Time the broker has to answer the forwarded CONNECT [default: 10s].
        #[arg(long)]
        connack_timeout: Option<String>,
        /// How long established connections may continue after SIGTERM before they are closed [default: 30s].
        #[arg(long)]
        drain_timeout: Option<String>,
        /// Address of the admin HTTP server (/metrics, /healthz, /readyz, /certs); off unless set.
        #[arg(long)]
        admin: Option<String>,
        /// Most client connections open at once; more are closed at accept [default: 100000].
        #[arg(long)]
        max_connections: Option<usize>,
        /// Most TLS handshakes in progress at once; more are closed at accept [default: 4096].
        #[arg(long)]
        max_handshakes: Option<usize>,
        /// New connections per second for the whole process, refused at accept past it (token bucket) [default: off].
        #[arg(long)]
        max_conn_rate: Option<u32>,
        /// Connections accepted at once above max_conn_rate (the bucket's size) [default: max_conn_rate].
        #[arg(long)]
        max_conn_burst: Option<u32>,
        /// Open connections per source address (see source_prefix_v4/v6); more are refused at accept [default: off].
        #[arg(long)]
        max_conn_per_source: Option<u32>,
        /// New connections per second per source address; more are refused at accept [default: off].
        #[arg(long)]
        max_conn_rate_per_source: Option<u32>,
        /// IPv4 prefix length that makes one source for the per-source limits [default: 32].
        #[arg(long)]
        source_prefix_v4: Option<u8>,
        /// IPv6 prefix length that makes one source for the per-source limits [default: 64].
        #[arg(long)]
        source_prefix_v6: Option<u8>,
        /// Open connections one client certificate may hold; more get CONNACK "quota exceeded" [default: off].
        #[arg(long)]
        max_conn_per_identity: Option<u32>,
        /// How often readiness checks that the broker accepts a TCP connection [default: 5s].
        #[arg(long)]
        upstream_check_interval: Option<String>,
        /// How often the TLS files are re-read and compared by content hash, for file systems whose changes
        /// the watcher does not see (NFS); "off" or "0" disables [default: 60s].
        #[arg(long)]
        reload_interval: Option<String>,
        /// Quiet period after the last file event before the TLS files are reloaded, so a certificate and
        /// its key written one after the other load as a pair [default: 200ms].
        #[arg(long)]
        reload_debounce: Option<String>,
        /// Refuse a server certificate that is expired or not yet valid (at start-up and on reload) instead
        /// of loading it with a warning.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
        refuse_expired: Option<bool>,
        /// Worker threads of the runtime [default: the number of CPUs].
        #[arg(long)]
        threads: Option<usize>,
        /// After traffic, keep polling for events this long instead of sleeping (lower round-trip
        /// latency for CPU time), at most 10ms; "off" or "0" disables [default: off].
        #[arg(long)]
        busy_poll: Option<String>,
        /// Nice value of the threads that run TLS handshakes and everything before the splice, so that
        /// established connections are served first during a reconnect storm; 0 runs them on the same
        /// threads as established connections [default: 10].
        #[arg(long)]
        handshake_nice: Option<u8>,
    }
}

/// Reads and parses a configuration file. Unknown keys are errors: a typo must not silently fall back
/// to a default.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Layer, super::ConfigError> {
    parse_file(path)
}

/// Reads `path` as TOML into `T`; a syntax or type error is one line naming the file and the line.
pub(crate) fn parse_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, super::ConfigError> {
    use super::ConfigError;
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
