//! From layers to validated settings: every value parsed and checked once, every error naming the
//! setting and where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::layer::Layer;
use super::{default_threads, relative_to, Config, ConfigError, Global, Listener, Origin};
use crate::conn::admission::AdmissionSettings;
use crate::conn::handshake_threads::DEFAULT_HANDSHAKE_NICE;
use crate::conn::proxy_protocol::{self, ProxyProtocolSettings, UpstreamProxyProtocol};
use crate::conn::upstream::Upstream;
use crate::conn::websocket::{self, Origins, WebSocketSettings};
use crate::conn::Limits;
use crate::crl::CrlSettings;
use crate::duration;
use crate::mqtt::connect::MAX_REMAINING_LEN as MAX_REMAINING_LENGTH;
use crate::recheck::RecheckSettings;
use crate::reload::{ReloadSettings, DEFAULT_RELOAD_DEBOUNCE, DEFAULT_RELOAD_INTERVAL};
use crate::tls::{ClientAuth, SniCert, TlsSettings};
use crate::x509::identity::UsernameFrom;
use crate::x509::policy::{ClientIdPolicy, IdentityPolicy};
use crate::x509::rules::{RuleKind, Rules};

/// A debounce longer than this would make a rotation look ignored; it is almost certainly a typo.
const MAX_RELOAD_DEBOUNCE: Duration = Duration::from_secs(60);
/// Longest `busy_poll` window: beyond a few milliseconds spinning only burns CPU (an answer that slow
/// no longer finds a sleeping CPU's wake-up significant).
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);

/// Which layer set each setting: what an error message says about where a value came from.
struct Sources<'a> {
    flags: Vec<&'static str>,
    file: Vec<&'static str>,
    path: Option<&'a Path>,
    /// The listener, when the file has `[[listener]]` blocks.
    listener: Option<&'a str>,
}

impl Sources<'_> {
    fn of(&self, setting: &'static str) -> Origin {
        if self.flags.contains(&setting) {
            Origin::CommandLine
        } else if self.file.contains(&setting) {
            self.file_origin()
        } else {
            Origin::Default
        }
    }

    fn file_origin(&self) -> Origin {
        let path = self.path.map(Path::to_path_buf).unwrap_or_default();
        match self.listener {
            Some(name) => Origin::Listener(path, name.to_string()),
            None => Origin::File(path),
        }
    }

    fn invalid(&self, setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { setting, origin: self.of(setting), reason: reason.into() }
    }
}

/// The whole configuration: flags over the file's top level (and each `[[listener]]` block).
pub(super) fn config(flags: &Layer, file: Option<(PathBuf, Layer)>) -> Result<Config, ConfigError> {
    let (path, mut top) = match file {
        Some((path, layer)) => (Some(path), layer),
        None => (None, Layer::default()),
    };
    let blocks = std::mem::take(&mut top.listener);
    let sources = Sources { flags: flags.set(), file: top.set(), path: path.as_deref(), listener: None };
    let global = global(&flags.clone().over(top.clone()), &sources)?;
    let mut listeners: Vec<Listener> = Vec::with_capacity(blocks.len().max(1));
    if blocks.is_empty() {
        listeners.push(listener(&flags.clone().over(top.clone()), &sources, &global)?);
    }
    for (i, block) in blocks.into_iter().enumerate() {
        let name = block.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
        let layer = Layer::from_block(block);
        let mut file_set = layer.set();
        file_set.extend(top.set());
        let sources = Sources { flags: flags.set(), file: file_set, path: path.as_deref(), listener: Some(&name) };
        if listeners.iter().any(|l| l.name.as_deref() == Some(name.as_str())) {
            return Err(ConfigError::Invalid {
                setting: "name",
                origin: sources.file_origin(),
                reason: "two listeners have this name".into(),
            });
        }
        let mut l = listener(&flags.clone().over(layer).over(top.clone()), &sources, &global)?;
        // Port 0 (any free port) can't clash.
        if let Some(other) = listeners.iter().find(|o| o.listen == l.listen && l.listen.port() != 0) {
            return Err(ConfigError::Invalid {
                setting: "listen",
                origin: sources.file_origin(),
                reason: format!(
                    "{} is also the address of listener {}",
                    l.listen,
                    other.name.as_deref().unwrap_or_default()
                ),
            });
        }
        l.name = Some(name);
        listeners.push(l);
    }
    Ok(Config { file: path, global, listeners })
}

fn global(l: &Layer, src: &Sources<'_>) -> Result<Global, ConfigError> {
    let defaults = Limits::default();
    let dur = |setting: &'static str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => duration::parse(s).map_err(|reason| src.invalid(setting, reason)),
    };
    let at_least_one = |setting: &'static str, v: Option<usize>, default: usize| match v {
        None => Ok(default),
        Some(0) => Err(src.invalid(setting, "must be at least 1")),
        Some(n) => Ok(n),
    };
    let at_most = |setting: &'static str, s: &str, max: Duration| match duration::parse(s) {
        Ok(d) if d <= max => Ok(d),
        Ok(d) => Err(src.invalid(
            setting,
            format!("{} is longer than the {} limit", humantime::format_duration(d), humantime::format_duration(max)),
        )),
        Err(reason) => Err(src.invalid(setting, reason)),
    };
    let max_connect_size = match l.max_connect_size {
        None => defaults.max_connect_size,
        Some(n) if !(16..=MAX_REMAINING_LENGTH).contains(&n) => {
            return Err(src.invalid(
                "max_connect_size",
                format!("{n} is outside 16..={MAX_REMAINING_LENGTH} bytes (the MQTT maximum packet size)"),
            ))
        }
        Some(n) => n,
    };
    let connect_buffer_budget = match l.connect_buffer_budget {
        None => defaults.connect_buffer_budget.max(max_connect_size),
        Some(n) if n < max_connect_size => {
            return Err(src.invalid(
                "connect_buffer_budget",
                format!(
                    "{n} bytes is less than max_connect_size ({max_connect_size}): a CONNECT of that size could \
                     never be read"
                ),
            ))
        }
        Some(n) => n,
    };
    let limits = Limits {
        handshake_timeout: dur("handshake_timeout", &l.handshake_timeout, defaults.handshake_timeout)?,
        connect_timeout: dur("connect_timeout", &l.connect_timeout, defaults.connect_timeout)?,
        max_connect_size,
        connect_buffer_budget,
        upstream_connect_timeout: dur(
            "upstream_connect_timeout",
            &l.upstream_connect_timeout,
            defaults.upstream_connect_timeout,
        )?,
        connack_timeout: dur("connack_timeout", &l.connack_timeout, defaults.connack_timeout)?,
        max_connections: at_least_one("max_connections", l.max_connections, defaults.max_connections)?,
        max_handshakes: at_least_one("max_handshakes", l.max_handshakes, defaults.max_handshakes)?,
    };
    let admin = match &l.admin {
        Some(s) => Some(
            s.parse::<SocketAddr>()
                .map_err(|e| src.invalid("admin", format!("{s:?} is not an IP:port address ({e})")))?,
        ),
        None => None,
    };
    let upstream_check_interval = dur("upstream_check_interval", &l.upstream_check_interval, Duration::from_secs(5))?;
    if upstream_check_interval.is_zero() {
        return Err(src.invalid("upstream_check_interval", "must be longer than zero"));
    }
    let interval = match &l.reload_interval {
        None => Some(DEFAULT_RELOAD_INTERVAL),
        Some(s) if duration::is_off(s) => None,
        Some(s) => Some(duration::parse(s).map_err(|reason| {
            src.invalid("reload_interval", format!("{reason}; use \"off\" to disable the re-check"))
        })?),
    };
    let debounce = match &l.reload_debounce {
        None => DEFAULT_RELOAD_DEBOUNCE,
        Some(s) => at_most("reload_debounce", s, MAX_RELOAD_DEBOUNCE)?,
    };
    let log_level = match &l.log_level {
        Some(s) => {
            tracing_subscriber::EnvFilter::try_new(s)
                .map_err(|e| src.invalid("log_level", format!("{s:?} is not a level or filter directive ({e})")))?;
            s.clone()
        }
        None => "info".to_string(),
    };
    let busy_poll = match &l.busy_poll {
        None => None,
        Some(s) if duration::is_off(s) => None,
        Some(s) => Some(at_most("busy_poll", s, MAX_BUSY_POLL)?),
    };
    let admission = admission_settings(l, src)?;
    Ok(Global {
        admission,
        log_level,
        log_format: l.log_format.unwrap_or_default(),
        limits,
        drain_timeout: dur("drain_timeout", &l.drain_timeout, Duration::from_secs(30))?,
        admin,
        upstream_check_interval,
        reload: ReloadSettings { interval, debounce, watch: true },
        refuse_expired: l.refuse_expired.unwrap_or(false),
        threads: at_least_one("threads", l.threads, default_threads())?,
        busy_poll,
        handshake_nice: match l.handshake_nice {
            None => DEFAULT_HANDSHAKE_NICE,
            Some(n) if n <= 19 => n,
            Some(n) => return Err(src.invalid("handshake_nice", format!("{n} is not a nice value from 0 to 19"))),
        },
    })
}

/// Admission limits: each at least 1 when set (left out = no limit); prefixes within the address size.
fn admission_settings(l: &Layer, src: &Sources<'_>) -> Result<AdmissionSettings, ConfigError> {
    let positive = |setting: &'static str, v: Option<u32>| match v {
        Some(0) => Err(src.invalid(setting, "must be at least 1 (leave it out for no limit)")),
        v => Ok(v),
    };
    let prefix = |setting: &'static str, v: Option<u8>, max: u8, default: u8| match v {
        None => Ok(default),
        Some(p) if (1..=max).contains(&p) => Ok(p),
        Some(p) => Err(src.invalid(setting, format!("{p} is not a prefix length from 1 to {max}"))),
    };
    let defaults = AdmissionSettings::default();
    let settings = AdmissionSettings {
        rate: positive("max_conn_rate", l.max_conn_rate)?,
        burst: positive("max_conn_burst", l.max_conn_burst)?,
        per_source: positive("max_conn_per_source", l.max_conn_per_source)?,
        rate_per_source: positive("max_conn_rate_per_source", l.max_conn_rate_per_source)?,
        prefix_v4: prefix("source_prefix_v4", l.source_prefix_v4, 32, defaults.prefix_v4)?,
        prefix_v6: prefix("source_prefix_v6", l.source_prefix_v6, 128, defaults.prefix_v6)?,
        per_identity: positive("max_conn_per_identity", l.max_conn_per_identity)?,
    };
    if settings.burst.is_some() && settings.rate.is_none() {
        return Err(src.invalid("max_conn_burst", "applies to max_conn_rate, which is not set"));
    }
    Ok(settings)
}

fn listener(l: &Layer, src: &Sources<'_>, global: &Global) -> Result<Listener, ConfigError> {
    let listen = match &l.listen {
        Some(s) => s
            .parse::<SocketAddr>()
            .map_err(|e| src.invalid("listen", format!("{s:?} is not an IP:port address ({e})")))?,
        None => SocketAddr::from(([0, 0, 0, 0], 8883)),
    };
    let upstream = match &l.upstream {
        Some(s) => s.parse::<Upstream>().map_err(|e| src.invalid("upstream", e.to_string()))?,
        None => Upstream::default(),
    };
    let identity = IdentityPolicy {
        username_from: l.username_from.unwrap_or_default(),
        client_username: l.client_username.unwrap_or_default(),
        password: l.password.unwrap_or_default(),
        client_id: l.client_id.unwrap_or_default(),
    };
    let mut authz = Rules::default();
    for (kind, patterns) in [
        (RuleKind::Cn, &l.allow_cn),
        (RuleKind::Ou, &l.allow_ou),
        (RuleKind::Dns, &l.allow_dns),
        (RuleKind::Uri, &l.allow_uri),
        (RuleKind::Issuer, &l.allow_issuer),
    ] {
        authz
            .set(kind, patterns.as_deref().unwrap_or_default())
            .map_err(|e| src.invalid(kind.setting(), e.to_string()))?;
    }
    Ok(Listener {
        name: None,
        listen,
        reuse_port: l.reuse_port.unwrap_or(false),
        upstream,
        proxy_protocol: proxy_protocol_settings(l, src, &identity)?,
        tls: tls_settings(l, src, global)?,
        identity,
        authz,
        recheck: recheck_settings(l, src)?,
        websocket: websocket_settings(l, src)?,
    })
}

/// What the listener speaks, and the WebSocket settings (which a `protocol = "mqtt"` listener ignores:
/// `check` prints them for every listener, and its output must load).
fn websocket_settings(l: &Layer, src: &Sources<'_>) -> Result<WebSocketSettings, ConfigError> {
    let defaults = WebSocketSettings::default();
    let protocol = l.protocol.unwrap_or_default();
    let ws_path = match &l.ws_path {
        None => defaults.ws_path,
        Some(p) => {
            websocket::check_path(p).map_err(|reason| src.invalid("ws_path", reason))?;
            p.clone()
        }
    };
    let ws_allowed_origins = Origins::new(l.ws_allowed_origins.as_deref().unwrap_or_default())
        .map_err(|e| src.invalid("ws_allowed_origins", e.to_string()))?;
    let ws_max_message_size = match l.ws_max_message_size {
        None => defaults.ws_max_message_size,
        Some(n) if n < 2 => return Err(src.invalid("ws_max_message_size", "must be at least 2 bytes (a PINGREQ)")),
        Some(n) => n,
    };
    Ok(WebSocketSettings { protocol, ws_path, ws_allowed_origins, ws_max_message_size })
}

/// What established connections are held to: the spread of re-check closes, expiry, lifetime.
fn recheck_settings(l: &Layer, src: &Sources<'_>) -> Result<RecheckSettings, ConfigError> {
    let defaults = RecheckSettings::default();
    let spread = match &l.recheck_spread {
        None => defaults.spread,
        Some(s) if duration::is_off(s) => Duration::ZERO,
        Some(s) => duration::parse(s).map_err(|reason| src.invalid("recheck_spread", reason))?,
    };
    let max_lifetime = match &l.max_conn_lifetime {
        None => None,
        Some(s) if duration::is_off(s) => None,
        Some(s) => match duration::parse(s) {
            Ok(d) if d < Duration::from_secs(1) => {
                return Err(src.invalid("max_conn_lifetime", "must be at least 1s (or \"off\")"))
            }
            Ok(d) => Some(d),
            Err(reason) => return Err(src.invalid("max_conn_lifetime", reason)),
        },
    };
    Ok(RecheckSettings {
        spread,
        close_at_cert_expiry: l.close_at_cert_expiry.unwrap_or(defaults.close_at_cert_expiry),
        max_lifetime,
    })
}

fn tls_settings(l: &Layer, src: &Sources<'_>, global: &Global) -> Result<TlsSettings, ConfigError> {
    // A path from the file is relative to the file; one from the command line to the working directory.
    let path = |setting: &'static str, p: &PathBuf| -> Result<PathBuf, ConfigError> {
        match src.of(setting) {
            Origin::CommandLine if p.as_os_str().is_empty() => Err(src.invalid(setting, "empty path")),
            Origin::CommandLine => Ok(p.clone()),
            _ => Ok(relative_to(src.path, p.clone())),
        }
    };
    let cert = path("cert", l.cert.as_ref().ok_or(ConfigError::Missing { setting: "cert" })?)?;
    let key = path("key", l.key.as_ref().ok_or(ConfigError::Missing { setting: "key" })?)?;
    let client_ca = l.client_ca.as_ref().map(|p| path("client_ca", p)).transpose()?;
    let ocsp_staple = l.ocsp_staple.as_ref().map(|p| path("ocsp_staple", p)).transpose()?;
    let ticket_keys = l.ticket_keys.as_ref().map(|p| path("ticket_keys", p)).transpose()?;
    let client_auth = l.client_auth.unwrap_or_default();
    if client_auth != ClientAuth::None && client_ca.is_none() {
        return Err(src.invalid(
            "client_auth",
            format!(
                "client_auth {} needs client_ca (the PEM bundle that signs client certificates); \
                 set client_ca or use client_auth none",
                client_auth.as_str()
            ),
        ));
    }
    let crls = l.crl.iter().flatten().map(|p| path("crl", p)).collect::<Result<Vec<_>, _>>()?;
    if !crls.is_empty() && client_auth == ClientAuth::None {
        return Err(src.invalid("crl", "CRLs only apply to client certificates, but client_auth is none"));
    }
    let crl_fetch = crl_settings(l, src, client_auth)?;
    let sni = l
        .sni
        .iter()
        .flatten()
        .map(|entry| {
            Ok(SniCert {
                names: sni_names(&entry.names, src)?,
                cert: relative_to(src.path, entry.cert.clone()),
                key: relative_to(src.path, entry.key.clone()),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        crls,
        refuse_expired: global.refuse_expired,
        alpn: alpn_protocols(l.alpn.as_deref().unwrap_or_default(), src)?,
        sni,
        ocsp_staple,
        ticket_keys,
        crl_fetch,
    })
}

/// The CRL fetching settings: `http://` URLs only, without duplicates; positive durations and size.
fn crl_settings(l: &Layer, src: &Sources<'_>, client_auth: ClientAuth) -> Result<CrlSettings, ConfigError> {
    let defaults = CrlSettings::default();
    let positive = |setting: &'static str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => match duration::parse(s) {
            Ok(d) if d.is_zero() => Err(src.invalid(setting, "must be longer than zero")),
            Ok(d) => Ok(d),
            Err(reason) => Err(src.invalid(setting, reason)),
        },
    };
    let mut urls: Vec<String> = Vec::new();
    for url in l.crl_urls.iter().flatten() {
        let url = url.trim().to_string();
        crate::crl::check_url(&url).map_err(|reason| src.invalid("crl_urls", reason))?;
        if urls.contains(&url) {
            return Err(src.invalid("crl_urls", format!("{url:?} is listed twice")));
        }
        urls.push(url);
    }
    if urls.len() > crate::crl::MAX_CRL_URLS {
        return Err(src.invalid("crl_urls", format!("more than {} URLs", crate::crl::MAX_CRL_URLS)));
    }
    let settings = CrlSettings {
        urls,
        from_distribution_points: l.crl_from_distribution_points.unwrap_or(false),
        refresh: positive("crl_refresh", &l.crl_refresh, defaults.refresh)?,
        stale: l.crl_stale.unwrap_or_default(),
        fetch_timeout: positive("crl_fetch_timeout", &l.crl_fetch_timeout, defaults.fetch_timeout)?,
        max_size: match l.crl_max_size {
            None => defaults.max_size,
            Some(0) => return Err(src.invalid("crl_max_size", "must be at least 1 byte")),
            Some(n) => n,
        },
    };
    if settings.enabled() && client_auth == ClientAuth::None {
        let setting = if settings.urls.is_empty() { "crl_from_distribution_points" } else { "crl_urls" };
        return Err(src.invalid(setting, "CRLs only apply to client certificates, but client_auth is none"));
    }
    Ok(settings)
}

/// ALPN protocol names: non-empty, at most 255 bytes (the TLS limit), no duplicates.
fn alpn_protocols(list: &[String], src: &Sources<'_>) -> Result<Vec<String>, ConfigError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for p in list {
        if p.is_empty() || p.len() > 255 {
            return Err(src.invalid("alpn", format!("{p:?} is not an ALPN protocol name (1 to 255 bytes)")));
        }
        if out.contains(p) {
            return Err(src.invalid("alpn", format!("{p:?} is listed twice")));
        }
        out.push(p.clone());
    }
    Ok(out)
}

/// SNI names: DNS names, lower-cased; a wildcard only as the whole first label (`*.example.org`).
fn sni_names(names: &[String], src: &Sources<'_>) -> Result<Vec<String>, ConfigError> {
    if names.is_empty() {
        return Err(src.invalid("sni", "an entry has no names"));
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
                Err(src.invalid("sni", format!("{n:?} is not a DNS name or a *.suffix wildcard")))
            }
        })
        .collect()
}

/// The PROXY protocol settings, checked against each other and the identity policy.
fn proxy_protocol_settings(
    l: &Layer,
    src: &Sources<'_>,
    identity: &IdentityPolicy,
) -> Result<ProxyProtocolSettings, ConfigError> {
    let accept = l.accept_proxy_protocol.unwrap_or(false);
    let accept_from = l
        .proxy_protocol_from
        .iter()
        .flatten()
        .map(|r| proxy_protocol::parse_source_range(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|reason| src.invalid("proxy_protocol_from", reason))?;
    if accept && accept_from.is_empty() {
        return Err(src.invalid(
            "accept_proxy_protocol",
            "needs proxy_protocol_from: the source ranges of the load balancers that send PROXY headers \
             (a header from anywhere else would let a client choose its own address)",
        ));
    }
    if !accept && !accept_from.is_empty() {
        return Err(src.invalid("proxy_protocol_from", "has no effect unless accept_proxy_protocol is true"));
    }
    let upstream = l.upstream_proxy_protocol.unwrap_or(UpstreamProxyProtocol::Off);
    let rewrite_connect = l.rewrite_connect.unwrap_or(true);
    if !rewrite_connect && upstream != UpstreamProxyProtocol::V2 {
        return Err(src.invalid(
            "rewrite_connect",
            format!(
                "false leaves the certificate identity to the PROXY v2 header, but upstream_proxy_protocol is {}; \
                 set upstream_proxy_protocol = \"v2\" (for a broker that reads it) or rewrite_connect = true",
                upstream.as_str()
            ),
        ));
    }
    if !rewrite_connect && identity.username_from != UsernameFrom::Cn {
        return Err(src.invalid(
            "rewrite_connect",
            format!(
                "false leaves the identity to the PROXY v2 header, which carries the certificate CN only, \
                 but username_from is {}; use username_from = \"cn\" or rewrite_connect = true",
                identity.username_from
            ),
        ));
    }
    if !rewrite_connect && identity.client_id == ClientIdPolicy::FromIdentity {
        return Err(src.invalid(
            "rewrite_connect",
            "false leaves the CONNECT untouched, so client_id = \"from-identity\" can't apply; \
             use client_id = \"require-prefix\" or rewrite_connect = true",
        ));
    }
    Ok(ProxyProtocolSettings { accept_from, upstream, rewrite_connect })
}
