//! The configuration layer's rules: precedence, inheritance, errors, and `check` output.

use super::*;
use crate::conn::proxy_protocol::UpstreamProxyProtocol;
use crate::x509::rules::RuleKind;
use std::time::Duration;

fn args(list: &[&str]) -> Layer {
    let mut v = vec!["mqtls"];
    v.extend_from_slice(list);
    Cli::parse_from(v).run.settings
}

fn file(toml_text: &str) -> Option<(PathBuf, Layer)> {
    Some((PathBuf::from("/etc/mqtls/mqtls.toml"), toml::from_str(toml_text).expect("valid toml")))
}

/// The configuration of flags over a file.
fn load(flags: &Layer, file: Option<(PathBuf, Layer)>) -> Result<Config, ConfigError> {
    Config::from_layers(flags, file)
}

fn back(text: &str) -> Config {
    load(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(text).expect("check output is TOML"))))
        .expect("check output is a valid config")
}

#[test]
fn flags_override_file_values() {
    let cfg = load(
        &args(&["--listen", "127.0.0.1:9999", "--client-auth", "none"]),
        file("listen = \"127.0.0.1:1\"\ncert = \"c.pem\"\nkey = \"k.pem\"\nupstream = \"broker:1884\""),
    )
    .expect("valid");
    assert_eq!(cfg.listeners[0].listen.port(), 9999);
    assert_eq!(cfg.listeners[0].upstream.to_string(), "broker:1884");
}

#[test]
fn relative_paths_in_a_file_resolve_against_its_directory() {
    let cfg = load(&args(&["--client-auth", "none"]), file("cert = \"c.pem\"\nkey = \"/abs/k.pem\"")).expect("valid");
    assert_eq!(cfg.listeners[0].tls.cert, PathBuf::from("/etc/mqtls/c.pem"));
    assert_eq!(cfg.listeners[0].tls.key, PathBuf::from("/abs/k.pem"));
}

#[test]
fn ticket_keys_is_a_path_relative_to_the_file_and_printed_by_check() {
    let cfg = load(&args(&base()), file("ticket_keys = \"keys/ticket.keys\"")).expect("valid");
    assert_eq!(cfg.listeners[0].tls.ticket_keys, Some(PathBuf::from("/etc/mqtls/keys/ticket.keys")));
    assert!(cfg.to_string().contains("ticket_keys = \"/etc/mqtls/keys/ticket.keys\""), "{cfg}");
    let mut a = base();
    a.extend(["--ticket-keys", "run/ticket.keys"]);
    let cfg = load(&args(&a), None).expect("valid");
    assert_eq!(cfg.listeners[0].tls.ticket_keys, Some(PathBuf::from("run/ticket.keys")), "the flag: as given");
    let cfg = load(&args(&base()), None).expect("valid");
    assert_eq!(cfg.listeners[0].tls.ticket_keys, None, "off unless set: keys of this process alone");
    assert!(!cfg.to_string().contains("ticket_keys"), "{cfg}");
}

#[test]
fn busy_poll_is_a_bounded_duration_or_off() {
    let cfg = load(&args(&base()), file("busy_poll = \"200us\"")).expect("valid");
    assert_eq!(cfg.global.busy_poll, Some(Duration::from_micros(200)));
    assert!(cfg.to_string().contains("busy_poll = \"200us\""), "{cfg}");
    let mut a = base();
    a.extend(["--busy-poll", "off"]);
    assert_eq!(load(&args(&a), file("busy_poll = \"1ms\"")).expect("valid").global.busy_poll, None);
    assert_eq!(load(&args(&base()), file("busy_poll = \"0\"")).expect("valid").global.busy_poll, None);
    let err = load(&args(&base()), file("busy_poll = \"1s\"")).expect_err("too long");
    assert!(err.to_string().starts_with("busy_poll (in /etc/mqtls/mqtls.toml)"), "{err}");
    assert!(err.to_string().contains("10ms limit"), "{err}");
    let err = load(&args(&base()), file("busy_poll = \"fast\"")).expect_err("not a duration");
    assert!(err.to_string().starts_with("busy_poll (in /etc/mqtls/mqtls.toml)"), "{err}");
}

#[test]
fn threads_come_from_flag_or_file_and_must_be_positive() {
    let cfg = load(&args(&base()), file("threads = 3")).expect("valid");
    assert_eq!(cfg.global.threads, 3);
    let mut a = base();
    a.extend(["--threads", "1"]);
    assert_eq!(load(&args(&a), file("threads = 3")).expect("valid").global.threads, 1);
    assert!(load(&args(&base()), file("threads = 0")).is_err());
    let text = load(&args(&a), None).expect("valid").to_string();
    assert!(text.contains("threads = 1"), "{text}");
}

#[test]
fn handshake_nice_is_a_nice_value_from_0_to_19_defaulting_to_10() {
    assert_eq!(load(&args(&base()), None).expect("valid").global.handshake_nice, 10);
    assert_eq!(load(&args(&base()), file("handshake_nice = 0")).expect("valid").global.handshake_nice, 0);
    let mut a = base();
    a.extend(["--handshake-nice", "5"]);
    assert_eq!(load(&args(&a), file("handshake_nice = 10")).expect("valid").global.handshake_nice, 5);
    let err = load(&args(&base()), file("handshake_nice = 20")).expect_err("out of range");
    assert!(err.to_string().starts_with("handshake_nice (in /etc/mqtls/mqtls.toml)"), "{err}");
}

#[test]
fn unknown_file_key_is_an_error_naming_the_key() {
    let err = toml::from_str::<Layer>("lissen = \"x\"").expect_err("must fail");
    assert!(err.to_string().contains("lissen"), "{err}");
}

#[test]
fn bad_address_error_names_setting_and_file() {
    let err = load(&args(&[]), file("listen = \"nonsense\"\ncert=\"c\"\nkey=\"k\"")).expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.starts_with("listen (in /etc/mqtls/mqtls.toml)"), "{msg}");
}

#[test]
fn required_client_auth_without_client_ca_is_an_error() {
    let err = load(&args(&["--cert", "c", "--key", "k"]), None).expect_err("must fail");
    assert!(err.to_string().contains("client_ca"), "{err}");
}

#[test]
fn missing_cert_names_the_flag() {
    let err = load(&args(&["--key", "k", "--client-auth", "none"]), None).expect_err("must fail");
    assert_eq!(err.to_string(), "cert is required (set it in the config file or with --cert)");
}

#[test]
fn durations_accept_human_units() {
    let cfg =
        load(&args(&["--cert", "c", "--key", "k", "--client-auth", "none", "--handshake-timeout", "1500ms"]), None)
            .expect("valid");
    assert_eq!(cfg.global.limits.handshake_timeout, Duration::from_millis(1500));
}

#[test]
fn check_output_parses_back_as_a_config_file() {
    let cfg = load(&args(&["--cert", "c", "--key", "k", "--client-ca", "ca", "--crl", "r.pem"]), None).expect("valid");
    let text = cfg.to_string();
    let back: Layer = toml::from_str(&text).expect("check output is valid config");
    assert_eq!(back.crl, Some(vec![PathBuf::from("r.pem")]));
}

fn base() -> Vec<&'static str> {
    vec!["--cert", "c", "--key", "k", "--client-auth", "none"]
}

#[test]
fn reload_interval_off_or_zero_disables_the_recheck() {
    for off in ["off", "0", "0s", "OFF"] {
        let mut a = base();
        a.extend(["--reload-interval", off]);
        assert_eq!(load(&args(&a), None).expect("valid").global.reload.interval, None, "{off}");
    }
}

#[test]
fn reload_settings_are_read_from_the_file() {
    let cfg = load(&args(&base()), file("reload_interval = \"5m\"\nreload_debounce = \"50ms\"\nrefuse_expired = true"))
        .expect("valid");
    assert_eq!(cfg.global.reload.interval, Some(Duration::from_secs(300)));
    assert_eq!(cfg.global.reload.debounce, Duration::from_millis(50));
    assert!(cfg.listeners[0].tls.refuse_expired);
}

#[test]
fn refuse_expired_flag_overrides_the_file_default() {
    let mut a = base();
    a.push("--refuse-expired");
    assert!(load(&args(&a), None).expect("valid").listeners[0].tls.refuse_expired);
}

#[test]
fn bad_reload_interval_names_the_setting_and_file() {
    let err = load(&args(&base()), file("reload_interval = \"soon\"")).expect_err("must fail");
    assert!(err.to_string().starts_with("reload_interval (in /etc/mqtls/mqtls.toml)"), "{err}");
}

#[test]
fn overlong_reload_debounce_is_an_error_naming_the_setting() {
    let mut a = base();
    a.extend(["--reload-debounce", "5m"]);
    let err = load(&args(&a), None).expect_err("must fail");
    assert!(err.to_string().starts_with("reload_debounce (in command line)"), "{err}");
}

#[test]
fn allow_rules_and_client_id_are_read_from_the_file() {
    let cfg = load(
            &args(&base()),
            file("allow_cn = [\"device-*\", \"gw-?\"]\nallow_uri = [\"spiffe://example.org/sensors/*\"]\nclient_id = \"from-identity\""),
        )
        .expect("valid");
    assert_eq!(cfg.listeners[0].authz.patterns(RuleKind::Cn), ["device-*", "gw-?"]);
    assert_eq!(cfg.listeners[0].authz.patterns(RuleKind::Uri), ["spiffe://example.org/sensors/*"]);
    assert!(cfg.listeners[0].authz.patterns(RuleKind::Issuer).is_empty());
    assert_eq!(cfg.listeners[0].identity.client_id, ClientIdPolicy::FromIdentity);
}

#[test]
fn allow_flags_replace_the_file_list_of_their_kind_only() {
    let mut a = base();
    a.extend(["--allow-cn", "a", "--allow-cn", "b", "--client-id", "require-prefix"]);
    let cfg = load(&args(&a), file("allow_cn = [\"file\"]\nallow_ou = [\"Fleet\"]")).expect("valid");
    assert_eq!(cfg.listeners[0].authz.patterns(RuleKind::Cn), ["a", "b"]);
    assert_eq!(cfg.listeners[0].authz.patterns(RuleKind::Ou), ["Fleet"]);
    assert_eq!(cfg.listeners[0].identity.client_id, ClientIdPolicy::RequirePrefix);
}

#[test]
fn no_allow_rules_and_keep_are_the_defaults() {
    let cfg = load(&args(&base()), None).expect("valid");
    assert!(cfg.listeners[0].authz.is_empty());
    assert_eq!(cfg.listeners[0].identity.client_id, ClientIdPolicy::Keep);
}

#[test]
fn bad_allow_glob_names_the_setting_and_file() {
    let err = load(&args(&base()), file("allow_issuer = [\"CN=[\"]")).expect_err("must fail");
    assert!(
        err.to_string().starts_with("allow_issuer (in /etc/mqtls/mqtls.toml): \"CN=[\" is not a valid glob"),
        "{err}"
    );
    let mut a = base();
    a.extend(["--allow-dns", ""]);
    let err = load(&args(&a), None).expect_err("must fail");
    assert!(err.to_string().starts_with("allow_dns (in command line)"), "{err}");
}

#[test]
fn check_output_round_trips_allow_rules_and_client_id() {
    let mut a = base();
    a.extend(["--allow-uri", "spiffe://x/*", "--allow-cn", r#"say "hi"\*"#, "--client-id", "from-identity"]);
    let cfg = load(&args(&a), None).expect("valid");
    let back = load(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(&cfg.to_string()).expect("toml"))))
        .expect("valid");
    assert_eq!(back.listeners[0].authz, cfg.listeners[0].authz);
    assert_eq!(back.listeners[0].identity.client_id, ClientIdPolicy::FromIdentity);
}

#[test]
fn check_output_round_trips_the_reload_settings() {
    let mut a = base();
    a.extend(["--reload-interval", "off", "--reload-debounce", "300ms", "--refuse-expired"]);
    let text = load(&args(&a), None).expect("valid").to_string();
    let back =
        load(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(&text).expect("toml")))).expect("valid");
    assert_eq!(back.global.reload.interval, None);
    assert_eq!(back.global.reload.debounce, Duration::from_millis(300));
    assert!(back.listeners[0].tls.refuse_expired);
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
    let all = load(&args(&[]), file(TWO_LISTENERS)).expect("valid").listeners;
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
    let all = load(&args(&["--upstream", "flag:1", "--alpn", "x-amzn-mqtt-ca"]), file(TWO_LISTENERS))
        .expect("valid")
        .listeners;
    assert!(all.iter().all(|c| c.upstream.to_string() == "flag:1" && c.tls.alpn == ["x-amzn-mqtt-ca"]));
}

#[test]
fn without_listener_blocks_the_top_level_is_the_one_listener() {
    let all = load(&args(&base()), file("listen = \"127.0.0.1:1\"")).expect("valid").listeners;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].name, None);
    assert_eq!(all[0].listen.port(), 1);
}

#[test]
fn a_global_key_in_a_listener_block_is_an_error_naming_it() {
    let err = toml::from_str::<Layer>("[[listener]]\nlisten = \"127.0.0.1:1\"\ndrain_timeout = \"1s\"")
        .expect_err("must fail");
    assert!(err.to_string().contains("drain_timeout"), "{err}");
}

#[test]
fn listener_errors_name_the_setting_the_file_and_the_listener() {
    let text = format!("{TWO_LISTENERS}\n[[listener]]\nname = \"dup\"\nlisten = \"127.0.0.1:8884\"\n");
    let err = load(&args(&[]), file(&text)).expect_err("same address");
    let msg = err.to_string();
    assert!(msg.starts_with("listen (in /etc/mqtls/mqtls.toml, listener dup)"), "{msg}");
    assert!(msg.contains("listener #2"), "{msg}");

    let text = TWO_LISTENERS.replace("upstream = \"other:1884\"", "upstream = \"other\"");
    let err = load(&args(&[]), file(&text)).expect_err("bad upstream");
    assert!(err.to_string().starts_with("upstream (in /etc/mqtls/mqtls.toml, listener #2)"), "{err}");

    let text = TWO_LISTENERS.replace("alpn = []", "alpn = [\"\"]");
    let err = load(&args(&[]), file(&text)).expect_err("bad alpn");
    assert!(err.to_string().starts_with("alpn (in /etc/mqtls/mqtls.toml, listener #2)"), "{err}");

    let text = TWO_LISTENERS.replace("*.b.example.org", "a.*.org");
    let err = load(&args(&[]), file(&text)).expect_err("bad sni name");
    assert!(err.to_string().starts_with("sni (in /etc/mqtls/mqtls.toml, listener certs)"), "{err}");
}

#[test]
fn check_output_round_trips_alpn_and_sni() {
    let cfg = load(&args(&[]), file(TWO_LISTENERS)).expect("valid");
    let back = back(&cfg.to_string());
    assert_eq!(back.listeners.len(), 2);
    for (a, b) in back.listeners.iter().zip(&cfg.listeners) {
        assert_eq!((&a.name, &a.tls.alpn, &a.tls.sni), (&b.name, &b.tls.alpn, &b.tls.sni));
    }
}

#[test]
fn check_output_is_the_whole_configuration_serialized() {
    for text in [TWO_LISTENERS, "cert = \"c\"\nkey = \"k\"\nclient_auth = \"none\"\nbusy_poll = \"1ms\""] {
        let cfg = load(&args(&[]), file(text)).expect("valid");
        assert_eq!(back(&cfg.to_string()), Config { file: Some(PathBuf::from("/x/m.toml")), ..cfg });
    }
}

#[test]
fn a_changed_sni_entry_needs_a_restart() {
    let old = load(&args(&[]), file(TWO_LISTENERS)).expect("valid");
    let renamed = TWO_LISTENERS.replace("cert = \"a.pem\"", "cert = \"renewed.pem\"");
    let new = load(&args(&[]), file(&renamed)).expect("valid");
    assert_eq!(old.needs_restart(&new), ["listener certs: sni"]);
    let added = TWO_LISTENERS
        .replace("sni = []\n", "\n[[listener.sni]]\nnames = [\"c.example.org\"]\ncert = \"c.pem\"\nkey = \"c.key\"\n");
    let new = load(&args(&[]), file(&added)).expect("valid");
    assert_eq!(old.needs_restart(&new), ["listener #2: sni"]);
}

#[test]
fn allow_rules_change_without_a_restart_and_everything_else_is_named() {
    let old = load(&args(&base()), file("allow_cn = [\"a\"]")).expect("valid");
    let new = load(&args(&base()), file("allow_cn = [\"b\"]\nmax_connections = 5\nalpn = [\"mqtt\"]")).expect("valid");
    assert_eq!(old.needs_restart(&new), ["max_connections", "alpn"], "global settings first");
}

#[test]
fn proxy_protocol_is_off_by_default() {
    let cfg = load(&args(&base()), None).expect("valid");
    assert_eq!(cfg.listeners[0].proxy_protocol, ProxyProtocolSettings::default());
    assert_eq!(cfg.listeners[0].proxy_protocol.upstream, UpstreamProxyProtocol::Off);
    assert!(cfg.listeners[0].proxy_protocol.rewrite_connect);
    assert!(!cfg.listeners[0].proxy_protocol.accepts());
}

#[test]
fn proxy_protocol_settings_are_read_from_the_file_and_round_trip_through_check() {
    let cfg = load(
        &args(&base()),
        file(
            "accept_proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.1\"]\n\
                 upstream_proxy_protocol = \"v2\"\nrewrite_connect = false",
        ),
    )
    .expect("valid");
    let pp = &cfg.listeners[0].proxy_protocol;
    assert_eq!(pp.upstream, UpstreamProxyProtocol::V2);
    assert!(!pp.rewrite_connect);
    assert!(pp.trusts("10.9.8.7".parse().expect("ip")) && pp.trusts("192.0.2.1".parse().expect("ip")));
    assert!(!pp.trusts("192.0.2.2".parse().expect("ip")));
    let text = cfg.to_string();
    let back =
        load(&args(&[]), Some((PathBuf::from("/x/m.toml"), toml::from_str(&text).expect("toml")))).expect("valid");
    assert_eq!(back.listeners[0].proxy_protocol, cfg.listeners[0].proxy_protocol);
}

#[test]
fn proxy_protocol_flags_override_the_file() {
    let mut a = base();
    a.extend(["--accept-proxy-protocol", "--proxy-protocol-from", "172.16.0.0/12", "--upstream-proxy-protocol", "v1"]);
    let cfg = load(&args(&a), file("upstream_proxy_protocol = \"v2\"")).expect("valid");
    assert_eq!(cfg.listeners[0].proxy_protocol.upstream, UpstreamProxyProtocol::V1);
    assert_eq!(
        cfg.listeners[0].proxy_protocol.accept_from,
        vec!["172.16.0.0/12".parse::<ipnet::IpNet>().expect("net")]
    );
}

#[test]
fn accept_proxy_protocol_without_sources_is_an_error_naming_the_setting_and_file() {
    let err = load(&args(&base()), file("accept_proxy_protocol = true")).expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.starts_with("accept_proxy_protocol (in /etc/mqtls/mqtls.toml)"), "{msg}");
    assert!(msg.contains("proxy_protocol_from"), "{msg}");
}

#[test]
fn proxy_protocol_sources_without_accept_are_an_error() {
    let mut a = base();
    a.extend(["--proxy-protocol-from", "10.0.0.0/8"]);
    let err = load(&args(&a), None).expect_err("must fail");
    assert!(err.to_string().starts_with("proxy_protocol_from (in command line)"), "{err}");
}

#[test]
fn a_bad_source_range_names_the_setting_and_the_value() {
    let err = load(
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
    let err = load(&args(&a), None).expect_err("no header");
    assert!(err.to_string().starts_with("rewrite_connect (in command line)"), "{err}");
    assert!(err.to_string().contains("upstream_proxy_protocol"), "{err}");

    a.extend(["--upstream-proxy-protocol", "v1"]);
    assert!(load(&args(&a), None).is_err(), "v1 carries no identity");

    let err = load(&args(&a), file("upstream_proxy_protocol = \"v2\"\nusername_from = \"subject\""));
    assert!(err.is_err(), "v1 from the command line wins");
    let mut b = base();
    b.extend(["--rewrite-connect", "false", "--upstream-proxy-protocol", "v2", "--username-from", "subject"]);
    let err = load(&args(&b), None).expect_err("subject can't travel in the header");
    assert!(err.to_string().contains("username_from is subject"), "{err}");

    let mut ok = base();
    ok.extend(["--rewrite-connect", "false", "--upstream-proxy-protocol", "v2"]);
    assert!(!load(&args(&ok), None).expect("valid").listeners[0].proxy_protocol.rewrite_connect);
}

#[test]
fn a_websockets_listener_beside_an_mqtt_one_reads_its_ws_settings_and_round_trips_through_check() {
    let text = "cert = \"c.pem\"\nkey = \"k.pem\"\nclient_auth = \"none\"\n\
                [[listener]]\nname = \"mqtts\"\nlisten = \"127.0.0.1:8883\"\n\
                [[listener]]\nname = \"wss\"\nlisten = \"127.0.0.1:443\"\nprotocol = \"websockets\"\n\
                ws_path = \"/ws/mqtt\"\nws_allowed_origins = [\"https://*.example.org\"]\nws_max_message_size = 65536\n";
    let cfg = load(&args(&[]), file(text)).expect("valid");
    let (mqtts, wss) = (&cfg.listeners[0].websocket, &cfg.listeners[1].websocket);
    assert_eq!(mqtts.protocol, ListenerProtocol::Mqtt);
    assert_eq!(wss.protocol, ListenerProtocol::Websockets);
    assert_eq!((wss.ws_path.as_str(), wss.ws_max_message_size), ("/ws/mqtt", 65536));
    assert!(wss.ws_allowed_origins.admit(Some("https://dash.example.org")));
    assert!(!wss.ws_allowed_origins.admit(Some("https://evil.example")));
    let again = back(&cfg.to_string());
    assert_eq!(again.listeners[1].websocket, cfg.listeners[1].websocket);
    assert_eq!(again.listeners[0].websocket, WebSocketSettings::default());
}

#[test]
fn bad_websocket_settings_name_the_setting_and_file() {
    for (line, setting) in [
        ("ws_path = \"mqtt\"", "ws_path"),
        ("ws_path = \"/mqtt?x=1\"", "ws_path"),
        ("ws_allowed_origins = [\"https://[a\"]", "ws_allowed_origins"),
        ("ws_max_message_size = 1", "ws_max_message_size"),
    ] {
        let err = load(&args(&base()), file(&format!("protocol = \"websockets\"\n{line}"))).expect_err(line);
        assert!(err.to_string().starts_with(&format!("{setting} (in /etc/mqtls/mqtls.toml)")), "{line}: {err}");
    }
    let err = toml::from_str::<Layer>("protocol = \"ws\"").expect_err("unknown protocol");
    assert!(err.to_string().contains("websockets"), "{err}");
}
