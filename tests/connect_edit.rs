//! Specification of the CONNECT reader/editor, through its public API only.
//!
//! A small test-only encoder builds CONNECT packets from a model; property tests check the reader
//! and editor against it, example tests pin down each refusal, and captured `mosquitto_pub`
//! packets in `tests/data` check interoperability with a real client.

use mqtls::mqtt::connect::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Test-only encoder
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Prop {
    Byte(u8, u8),
    U16(u8, u16),
    U32(u8, u32),
    Str(u8, String),
    Bin(u8, Vec<u8>),
    User(String, String),
}

#[derive(Debug, Clone)]
struct Will {
    qos: u8,
    retain: bool,
    props: Vec<Prop>,
    topic: String,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Model {
    version: ProtocolVersion,
    clean: bool,
    keep_alive: u16,
    props: Vec<Prop>,
    client_id: String,
    will: Option<Will>,
    username: Option<String>,
    password: Option<Vec<u8>>,
}

fn put_varint(mut v: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = u8::try_from(v & 0x7f).unwrap();
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            return;
        }
    }
}

fn put_bin(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_props(props: &[Prop], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    for p in props {
        match p {
            Prop::Byte(id, v) => body.extend_from_slice(&[*id, *v]),
            Prop::U16(id, v) => {
                body.push(*id);
                body.extend_from_slice(&v.to_be_bytes());
            }
            Prop::U32(id, v) => {
                body.push(*id);
                body.extend_from_slice(&v.to_be_bytes());
            }
            Prop::Str(id, s) => {
                body.push(*id);
                put_bin(s.as_bytes(), &mut body);
            }
            Prop::Bin(id, b) => {
                body.push(*id);
                put_bin(b, &mut body);
            }
            Prop::User(k, v) => {
                body.push(0x26);
                put_bin(k.as_bytes(), &mut body);
                put_bin(v.as_bytes(), &mut body);
            }
        }
    }
    put_varint(body.len(), out);
    out.extend_from_slice(&body);
}

/// Wraps a CONNECT body (variable header + payload) in its fixed header.
fn packet(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x10];
    put_varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

fn encode(m: &Model) -> Vec<u8> {
    let v5 = m.version == ProtocolVersion::V5;
    let mut b = Vec::new();
    put_bin(if m.version == ProtocolVersion::V31 { b"MQIsdp" } else { b"MQTT" }, &mut b);
    b.push(m.version.level());
    let mut flags = 0u8;
    if m.username.is_some() {
        flags |= 0x80;
    }
    if m.password.is_some() {
        flags |= 0x40;
    }
    if let Some(w) = &m.will {
        flags |= 0x04 | (w.qos << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    if m.clean {
        flags |= 0x02;
    }
    b.push(flags);
    b.extend_from_slice(&m.keep_alive.to_be_bytes());
    if v5 {
        put_props(&m.props, &mut b);
    }
    put_bin(m.client_id.as_bytes(), &mut b);
    if let Some(w) = &m.will {
        if v5 {
            put_props(&w.props, &mut b);
        }
        put_bin(w.topic.as_bytes(), &mut b);
        put_bin(&w.payload, &mut b);
    }
    if let Some(u) = &m.username {
        put_bin(u.as_bytes(), &mut b);
    }
    if let Some(p) = &m.password {
        put_bin(p, &mut b);
    }
    packet(&b)
}

/// A plain 3.1.1 CONNECT with client id "c".
fn base311() -> Model {
    Model {
        version: ProtocolVersion::V311,
        clean: true,
        keep_alive: 60,
        props: vec![],
        client_id: "c".into(),
        will: None,
        username: None,
        password: None,
    }
}

fn base(version: ProtocolVersion) -> Model {
    Model { version, ..base311() }
}

/// 3.1.1 variable header with the given connect flags and keep alive 60.
fn header311(flags: u8) -> Vec<u8> {
    vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60]
}

/// 5.0 variable header with the given flags, keep alive 60, and no properties length yet.
fn header5(flags: u8) -> Vec<u8> {
    vec![0, 4, b'M', b'Q', b'T', b'T', 5, flags, 0, 60]
}

fn read(buf: &[u8]) -> Result<Option<Connect>, ConnectError> {
    read_connect(buf, DEFAULT_MAX_CONNECT_LEN)
}

fn parse(buf: &[u8]) -> Connect {
    read(buf).expect("valid CONNECT").expect("complete CONNECT")
}

fn assert_malformed(buf: &[u8], version: ProtocolVersion) -> ConnectError {
    let err = read(buf).expect_err("must be refused");
    assert_eq!(err.label(), "malformed", "{err}");
    assert_eq!(err.version(), Some(version));
    err
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    // Any non-control characters (so never U+0000), multi-byte ones included, possibly empty.
    "\\PC{0,12}"
}

fn binary() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::collection::vec(any::<u8>(), 0..40),
        2 => prop::collection::vec(any::<u8>(), 100..400),      // 2-byte remaining length
        1 => prop::collection::vec(any::<u8>(), 16_400..16_600), // 3-byte remaining length
    ]
}

fn connect_prop() -> impl Strategy<Value = Prop> {
    prop_oneof![
        any::<u32>().prop_map(|v| Prop::U32(0x11, v)),
        any::<u16>().prop_map(|v| Prop::U16(0x21, v)),
        any::<u32>().prop_map(|v| Prop::U32(0x27, v)),
        any::<u16>().prop_map(|v| Prop::U16(0x22, v)),
        (0u8..2).prop_map(|v| Prop::Byte(0x19, v)),
        (0u8..2).prop_map(|v| Prop::Byte(0x17, v)),
        (text(), text()).prop_map(|(k, v)| Prop::User(k, v)),
        text().prop_map(|s| Prop::Str(0x15, s)),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| Prop::Bin(0x16, b)),
    ]
}

fn will_prop() -> impl Strategy<Value = Prop> {
    prop_oneof![
        any::<u32>().prop_map(|v| Prop::U32(0x18, v)),
        (0u8..2).prop_map(|v| Prop::Byte(0x01, v)),
        any::<u32>().prop_map(|v| Prop::U32(0x02, v)),
        text().prop_map(|s| Prop::Str(0x03, s)),
        text().prop_map(|s| Prop::Str(0x08, s)),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(|b| Prop::Bin(0x09, b)),
        (text(), text()).prop_map(|(k, v)| Prop::User(k, v)),
    ]
}

fn will() -> impl Strategy<Value = Will> {
    (0u8..3, any::<bool>(), prop::collection::vec(will_prop(), 0..5), text(), binary())
        .prop_map(|(qos, retain, props, topic, payload)| Will { qos, retain, props, topic, payload })
}

fn model() -> impl Strategy<Value = Model> {
    (
        prop_oneof![Just(ProtocolVersion::V31), Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)],
        any::<bool>(),
        any::<u16>(),
        prop::collection::vec(connect_prop(), 0..6),
        text(),
        prop::option::of(will()),
        prop::option::of(text()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..30)),
    )
        .prop_map(|(version, clean, keep_alive, props, client_id, will, username, password)| {
            let mut m = Model { version, clean, keep_alive, props, client_id, will, username, password };
            if version != ProtocolVersion::V5 {
                m.props.clear();
                if let Some(w) = &mut m.will {
                    w.props.clear();
                }
                if m.username.is_none() {
                    m.password = None; // 3.x: password requires username
                }
            }
            m
        })
}

/// A new username, whether to drop the password, and a new client id. Long values move the
/// remaining length across a varint boundary.
fn an_edit() -> impl Strategy<Value = (Option<String>, bool, Option<String>)> {
    (
        prop::option::of(prop_oneof![text(), "[a-z]{100,140}".prop_map(|s| s)]),
        any::<bool>(),
        prop::option::of(prop_oneof![text(), "[a-z]{100,140}".prop_map(|s| s)]),
    )
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_generated_connect_parses_even_with_pipelined_bytes(
        m in model(),
        pipelined in prop::collection::vec(any::<u8>(), 0..10),
    ) {
        let pkt = encode(&m);
        let mut buf = pkt.clone();
        buf.extend_from_slice(&pipelined);
        let c = read(&buf).unwrap().unwrap();
        prop_assert_eq!(c.packet_len(), pkt.len());
        prop_assert_eq!(c.version(), m.version);
        prop_assert_eq!(c.client_id(&buf), m.client_id.as_str());
        prop_assert_eq!(c.username(&buf), m.username.as_deref());
        prop_assert_eq!(c.has_password(), m.password.is_some());
        prop_assert_eq!(c.has_will(), m.will.is_some());
    }

    #[test]
    fn every_proper_prefix_of_a_valid_connect_needs_more_bytes(m in model()) {
        let pkt = encode(&m);
        for n in 0..pkt.len() {
            prop_assert_eq!(read(&pkt[..n]), Ok(None), "prefix of {} bytes", n);
        }
    }

    #[test]
    fn edit_changes_only_username_password_client_id_and_remaining_length(
        m in model(),
        pipelined in prop::collection::vec(any::<u8>(), 0..10),
        (username, drop_password, client_id) in an_edit(),
    ) {
        let pkt = encode(&m);
        let mut buf = pkt.clone();
        buf.extend_from_slice(&pipelined);
        let c = parse(&buf);
        let e = Edit { username: username.as_deref(), drop_password, client_id: client_id.as_deref() };
        let out = edit(&buf, &c, &e).unwrap();

        let mut expected = m.clone();
        if let Some(u) = &username {
            expected.username = Some(u.clone());
        }
        if drop_password {
            expected.password = None;
        }
        if let Some(id) = &client_id {
            expected.client_id = id.clone();
        }
        prop_assert_eq!(&out, &encode(&expected));

        let c2 = parse(&out);
        prop_assert_eq!(c2.packet_len(), out.len());
        prop_assert_eq!(c2.username(&out), expected.username.as_deref());
        prop_assert_eq!(c2.has_password(), expected.password.is_some());
        prop_assert_eq!(c2.client_id(&out), expected.client_id.as_str());
        prop_assert_eq!(c2.has_will(), m.will.is_some());
    }

    #[test]
    fn edit_without_changes_is_the_identity(
        m in model(),
        pipelined in prop::collection::vec(any::<u8>(), 0..10),
    ) {
        let pkt = encode(&m);
        let mut buf = pkt.clone();
        buf.extend_from_slice(&pipelined);
        let c = parse(&buf);
        prop_assert_eq!(edit(&buf, &c, &Edit::default()).unwrap(), pkt);
    }

    #[test]
    fn corrupted_connects_never_panic(
        m in model(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        (username, drop_password, client_id) in an_edit(),
    ) {
        let mut pkt = encode(&m);
        for (at, byte) in flips {
            let i = at.index(pkt.len());
            pkt[i] = byte;
        }
        exercise(&pkt, username.as_deref(), drop_password, client_id.as_deref());
        for n in 0..pkt.len().min(80) {
            exercise(&pkt[..n], None, false, None);
        }
    }
}

/// Runs every public entry point on `buf`; only panics are failures here.
fn exercise(buf: &[u8], username: Option<&str>, drop_password: bool, client_id: Option<&str>) {
    match read(buf) {
        Ok(Some(c)) => {
            let _ = (c.client_id(buf), c.username(buf), c.version().as_str());
            let out = edit(buf, &c, &Edit { username, drop_password, client_id }).unwrap();
            // Whatever we accept, our own output must be accepted too.
            assert!(matches!(read(&out), Ok(Some(_))));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = (e.label(), e.connack(), e.to_string());
        }
    }
}

#[test]
fn random_bytes_and_all_their_prefixes_never_panic() {
    // Deterministic xorshift so a failure is reproducible without proptest's persistence.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..5000 {
        let len = usize::try_from(next() % 64).unwrap();
        let mut buf: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        // Bias towards inputs that get past the first checks.
        if i % 2 == 0 && !buf.is_empty() {
            buf[0] = 0x10;
        }
        if i % 4 == 0 && buf.len() > 8 {
            buf[2..8].copy_from_slice(&[0, 4, b'M', b'Q', b'T', b'T']);
            buf[8] = [4, 5][i % 8 / 4];
        }
        for n in 0..=buf.len() {
            exercise(&buf[..n], Some("mapped"), true, [None, Some("id")][n % 2]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Captured mosquitto_pub packets
// ---------------------------------------------------------------------------------------------

struct Captured {
    file: &'static str,
    bytes: &'static [u8],
    version: ProtocolVersion,
    client_id: &'static str,
    username: Option<&'static str>,
    has_password: bool,
    has_will: bool,
}

fn captured() -> Vec<Captured> {
    use ProtocolVersion::{V31, V311, V5};
    macro_rules! cap {
        ($file:literal, $v:expr, $id:literal, $user:expr, $pw:expr, $will:expr) => {
            Captured {
                file: $file,
                bytes: include_bytes!(concat!("data/", $file)),
                version: $v,
                client_id: $id,
                username: $user,
                has_password: $pw,
                has_will: $will,
            }
        };
    }
    vec![
        cap!("connect-v31.bin", V31, "client31", Some("alice"), true, false),
        cap!("connect-v31-nouser.bin", V31, "client31nu", None, false, false),
        cap!("connect-v311.bin", V311, "client311", None, false, false),
        cap!("connect-v311-userpass.bin", V311, "client311up", Some("alice"), true, false),
        cap!("connect-v5.bin", V5, "client5", Some("bob"), false, true),
        cap!("connect-v5-userpass.bin", V5, "client5up", Some("carol"), true, false),
        cap!("connect-v5-nouser.bin", V5, "client5nu", None, false, false),
    ]
}

#[test]
fn captured_mosquitto_connects_parse_with_expected_fields() {
    for cap in captured() {
        let c = read(cap.bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", cap.file))
            .unwrap_or_else(|| panic!("{}: incomplete", cap.file));
        assert_eq!(c.packet_len(), cap.bytes.len(), "{}", cap.file);
        assert_eq!(c.version(), cap.version, "{}", cap.file);
        assert_eq!(c.client_id(cap.bytes), cap.client_id, "{}", cap.file);
        assert_eq!(c.username(cap.bytes), cap.username, "{}", cap.file);
        assert_eq!(c.has_password(), cap.has_password, "{}", cap.file);
        assert_eq!(c.has_will(), cap.has_will, "{}", cap.file);
    }
}

#[test]
fn every_proper_prefix_of_captured_connects_needs_more_bytes() {
    for cap in captured() {
        for n in 0..cap.bytes.len() {
            assert_eq!(read(&cap.bytes[..n]), Ok(None), "{} prefix {n}", cap.file);
        }
    }
}

#[test]
fn edit_without_changes_returns_captured_bytes_unchanged() {
    for cap in captured() {
        let c = parse(cap.bytes);
        assert_eq!(edit(cap.bytes, &c, &Edit::default()).unwrap(), cap.bytes, "{}", cap.file);
    }
}

#[test]
fn edit_keeps_will_properties_byte_for_byte() {
    // connect-v5.bin: CONNECT properties (user property k=v, session expiry 60, receive max 20),
    // will properties (user property a=b), will topic/payload, then username "bob" (5 bytes).
    let orig: &[u8] = include_bytes!("data/connect-v5.bin");
    let c = parse(orig);
    let out = edit(orig, &c, &Edit { username: Some("mapped"), drop_password: true, client_id: None }).unwrap();
    let body_without_username = &orig[2..orig.len() - 5];
    let mut expected = vec![0x10, u8::try_from(body_without_username.len() + 8).unwrap()];
    expected.extend_from_slice(body_without_username);
    expected.extend_from_slice(b"\x00\x06mapped");
    assert_eq!(out, expected);
}

#[test]
fn edit_inserts_username_at_the_end_when_client_sent_none() {
    let orig: &[u8] = include_bytes!("data/connect-v311.bin");
    let c = parse(orig);
    let out = edit(orig, &c, &Edit { username: Some("u"), drop_password: false, client_id: None }).unwrap();
    let mut expected = orig.to_vec();
    expected[1] += 3;
    expected[9] |= 0x80; // username flag
    expected.extend_from_slice(b"\x00\x01u");
    assert_eq!(out, expected);
}

#[test]
fn edit_inserts_username_before_a_v5_password_sent_without_username() {
    let mut m = base(ProtocolVersion::V5);
    m.password = Some(b"pw".to_vec());
    let pkt = encode(&m);
    assert!(parse(&pkt).has_password());
    let out =
        edit(&pkt, &parse(&pkt), &Edit { username: Some("alice"), drop_password: false, client_id: None }).unwrap();
    m.username = Some("alice".into());
    assert_eq!(out, encode(&m));
}

#[test]
fn edit_drops_password_and_clears_its_flag() {
    let orig: &[u8] = include_bytes!("data/connect-v311-userpass.bin");
    let c = parse(orig);
    let out = edit(orig, &c, &Edit { username: None, drop_password: true, client_id: None }).unwrap();
    let mut expected = orig[..orig.len() - 8].to_vec(); // "\0\x06s3cr3t"
    expected[1] -= 8;
    expected[9] &= !0x40;
    assert_eq!(out, expected);
    let c2 = parse(&out);
    assert_eq!(c2.username(&out), Some("alice"));
    assert!(!c2.has_password());
}

#[test]
fn edit_replaces_the_client_username() {
    let orig: &[u8] = include_bytes!("data/connect-v31.bin");
    let c = parse(orig);
    let out = edit(orig, &c, &Edit { username: Some("cn=device-42"), drop_password: true, client_id: None }).unwrap();
    let c2 = parse(&out);
    assert_eq!(c2.version(), ProtocolVersion::V31);
    assert_eq!(c2.client_id(&out), "client31");
    assert_eq!(c2.username(&out), Some("cn=device-42"));
    assert!(!c2.has_password());
}

#[test]
fn edit_grows_the_remaining_length_varint_when_needed() {
    let orig: &[u8] = include_bytes!("data/connect-v311.bin");
    let name = "x".repeat(110);
    let out = edit(orig, &parse(orig), &Edit { username: Some(&name), drop_password: false, client_id: None }).unwrap();
    let remaining = orig.len() - 2 + 2 + 110;
    assert_eq!(remaining, 133);
    assert_eq!(&out[1..3], &[0x85, 0x01]); // 133 = 5 + 1 * 128
    assert_eq!(out.len(), 3 + remaining);
    assert_eq!(parse(&out).username(&out), Some(name.as_str()));
}

#[test]
fn edit_output_excludes_pipelined_packets() {
    let mut buf = include_bytes!("data/connect-v311.bin").to_vec();
    let len = buf.len();
    buf.extend_from_slice(&[0x30, 0x03, 0x00, 0x01, b't']); // a PUBLISH right behind it
    let c = parse(&buf);
    assert_eq!(c.packet_len(), len);
    let out = edit(&buf, &c, &Edit { username: Some("u"), drop_password: false, client_id: None }).unwrap();
    assert_eq!(parse(&out).packet_len(), out.len());
    assert_eq!(edit(&buf, &c, &Edit::default()).unwrap(), &buf[..len]);
}

#[test]
fn edit_refuses_a_username_longer_than_65535_bytes() {
    let orig: &[u8] = include_bytes!("data/connect-v311.bin");
    let name = "x".repeat(65_536);
    let err =
        edit(orig, &parse(orig), &Edit { username: Some(&name), drop_password: false, client_id: None }).unwrap_err();
    assert!(matches!(err, ConnectError::Unencodable { .. }), "{err}");
    assert_eq!(err.label(), "edit");
    assert_eq!(err.connack(), Some(vec![0x20, 0x02, 0x00, 0x03]));
}

#[test]
fn edit_accepts_a_username_of_exactly_65535_bytes() {
    let orig: &[u8] = include_bytes!("data/connect-v5.bin");
    let name = "y".repeat(65_535);
    let out = edit(orig, &parse(orig), &Edit { username: Some(&name), drop_password: false, client_id: None }).unwrap();
    assert_eq!(parse(&out).username(&out), Some(name.as_str()));
}

#[test]
fn edit_refuses_a_username_containing_nul() {
    let orig: &[u8] = include_bytes!("data/connect-v5.bin");
    let err =
        edit(orig, &parse(orig), &Edit { username: Some("a\0b"), drop_password: false, client_id: None }).unwrap_err();
    assert!(matches!(err, ConnectError::Unencodable { .. }), "{err}");
    assert_eq!(err.connack(), Some(vec![0x20, 0x03, 0x00, 0x88, 0x00]));
}

#[test]
fn edit_replaces_the_client_id_and_keeps_the_will_and_properties() {
    // connect-v5.bin: client id "client5", then will properties, will topic and payload, username.
    let orig: &[u8] = include_bytes!("data/connect-v5.bin");
    let c = parse(orig);
    let out = edit(orig, &c, &Edit { client_id: Some("device-42"), ..Edit::default() }).unwrap();
    let at = orig.windows(9).position(|w| w == b"\x00\x07client5").unwrap();
    let mut expected = vec![0x10, orig[1] + 2];
    expected.extend_from_slice(&orig[2..at]);
    expected.extend_from_slice(b"\x00\x09device-42");
    expected.extend_from_slice(&orig[at + 9..]);
    assert_eq!(out, expected);
    let c2 = parse(&out);
    assert_eq!(c2.client_id(&out), "device-42");
    assert_eq!(c2.username(&out), Some("bob"));
    assert!(c2.has_will());
}

#[test]
fn edit_replaces_an_empty_client_id_in_every_version() {
    for version in [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut m = base(version);
        m.client_id = String::new();
        m.username = Some("u".into());
        let pkt = encode(&m);
        let out = edit(&pkt, &parse(&pkt), &Edit { client_id: Some("dev-a"), ..Edit::default() }).unwrap();
        m.client_id = "dev-a".into();
        assert_eq!(out, encode(&m), "{version}");
    }
}

#[test]
fn edit_refuses_a_client_id_that_mqtt_cannot_encode() {
    let orig: &[u8] = include_bytes!("data/connect-v311.bin");
    let long = "x".repeat(65_536);
    for bad in ["a\0b", long.as_str()] {
        let err = edit(orig, &parse(orig), &Edit { client_id: Some(bad), ..Edit::default() }).unwrap_err();
        assert!(matches!(err, ConnectError::Unencodable { .. }), "{err}");
        assert!(err.to_string().contains("client identifier"), "{err}");
    }
}

#[test]
fn edit_refuses_a_buffer_that_does_not_hold_the_connect() {
    let orig: &[u8] = include_bytes!("data/connect-v5.bin");
    let c = parse(orig);
    let err = edit(&orig[..10], &c, &Edit::default()).unwrap_err();
    assert_eq!(err, ConnectError::BufferMismatch);
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn empty_buffer_needs_more_bytes() {
    assert_eq!(read(&[]), Ok(None));
}

#[test]
fn publish_as_first_packet_is_refused_from_its_first_byte() {
    let err = read(&[0x30]).unwrap_err();
    assert_eq!(err, ConnectError::NotConnect { first_byte: 0x30 });
    assert_eq!(err.label(), "not_connect");
    assert_eq!(err.connack(), None);
    assert!(err.to_string().contains("0x30"), "{err}");
}

#[test]
fn tls_or_http_bytes_are_refused_from_the_first_byte() {
    let tls = read(b"\x16\x03\x01").unwrap_err();
    assert!(tls.to_string().contains("TLS inside TLS"), "{tls}");
    let http = read(b"GET / HTTP/1.1").unwrap_err();
    assert_eq!(http, ConnectError::NotConnect { first_byte: b'G' });
}

#[test]
fn connect_with_reserved_header_flags_is_refused_from_its_first_byte() {
    let err = read(&[0x12]).unwrap_err();
    assert_eq!(err, ConnectError::NotConnect { first_byte: 0x12 });
    assert!(err.to_string().contains("reserved header flags"), "{err}");
    assert_eq!(err.connack(), None);
}

#[test]
fn incomplete_remaining_length_needs_more_bytes() {
    assert_eq!(read(&[0x10, 0x80, 0x80, 0x80]), Ok(None));
}

#[test]
fn remaining_length_with_a_fifth_byte_is_malformed_as_soon_as_the_fourth_continues() {
    let err = read(&[0x10, 0x80, 0x80, 0x80, 0x80]).unwrap_err();
    assert_eq!(err, ConnectError::MalformedLength);
    assert_eq!(err.label(), "malformed");
    assert_eq!(read(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]), Err(err));
}

#[test]
fn header_claiming_268435455_bytes_is_too_large() {
    let err = read(&[0x10, 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
    assert_eq!(err, ConnectError::TooLarge { announced: 268_435_455, limit: DEFAULT_MAX_CONNECT_LEN, version: None });
    assert_eq!(err.label(), "too_large");
    assert_eq!(err.connack(), None);
}

#[test]
fn remaining_length_over_cap_is_refused_before_body_arrives() {
    assert!(matches!(read_connect(&[0x10, 101], 100), Err(ConnectError::TooLarge { announced: 101, limit: 100, .. })));
    assert_eq!(read_connect(&[0x10, 100], 100), Ok(None));
    // 0x20 << 14 = 524288 > 256 KiB
    assert!(matches!(read(&[0x10, 0x80, 0x80, 0x20]), Err(ConnectError::TooLarge { .. })));
}

#[test]
fn too_large_v5_connect_gets_packet_too_large_connack_if_its_header_arrived() {
    let mut buf = vec![0x10, 0x80, 0x80, 0x20];
    buf.extend_from_slice(&header5(0x02));
    let err = read(&buf).unwrap_err();
    assert_eq!(err.version(), Some(ProtocolVersion::V5));
    assert_eq!(err.connack(), Some(vec![0x20, 0x03, 0x00, 0x95, 0x00]));
}

#[test]
fn too_large_311_connect_gets_no_connack() {
    let mut buf = vec![0x10, 0x80, 0x80, 0x20];
    buf.extend_from_slice(&header311(0x02));
    let err = read(&buf).unwrap_err();
    assert_eq!(err.version(), Some(ProtocolVersion::V311));
    assert_eq!(err.connack(), None);
}

#[test]
fn wrong_protocol_name_is_refused_as_soon_as_its_bytes_arrive() {
    assert_eq!(read(&[0x10, 20, 0, 4, b'M', b'Q']), Ok(None));
    let err = read(&[0x10, 20, 0, 4, b'M', b'Q', b'X']).unwrap_err();
    assert_eq!(err, ConnectError::UnknownProtocol);
    assert_eq!(err.label(), "protocol");
    assert_eq!(err.connack(), None);
    assert_eq!(read(&[0x10, 20, 0, 5]), Err(ConnectError::UnknownProtocol));
}

#[test]
fn packet_ending_before_the_protocol_level_is_refused_not_awaited() {
    // Found by mutating the reader under the connect_raw fuzz target: the whole packet is here, so
    // "need more bytes" would wait forever. Pipelined bytes after it must not be read as the level.
    let pkt = [0x10, 6, 0, 4, b'M', b'Q', b'T', b'T'];
    assert_eq!(read(&pkt), Err(ConnectError::UnknownProtocol));
    let mut buf = pkt.to_vec();
    buf.extend_from_slice(&[5, 0x02, 0, 60]);
    assert_eq!(read(&buf), Err(ConnectError::UnknownProtocol));
}

#[test]
fn unknown_level_gets_unacceptable_protocol_version_connack() {
    let body = [0, 4, b'M', b'Q', b'T', b'T', 6];
    let err = read(&packet(&body)).unwrap_err();
    assert_eq!(err, ConnectError::UnsupportedLevel { level: 6 });
    assert_eq!(err.label(), "protocol");
    assert_eq!(err.connack(), Some(vec![0x20, 0x02, 0x00, 0x01]));
}

#[test]
fn a_level_under_the_wrong_protocol_name_is_refused_as_a_mismatch_not_as_unsupported() {
    let mqisdp4 = packet(&[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 4]);
    let err = read(&mqisdp4).unwrap_err();
    assert_eq!(err, ConnectError::NameLevelMismatch { name: "MQIsdp", level: 4 });
    let msg = err.to_string();
    assert!(msg.contains("\"MQIsdp\" does not go with level 4") && !msg.contains("unsupported"), "{msg}");
    assert_eq!(err.connack(), Some(vec![0x20, 0x02, 0x00, 0x01]), "still CONNACK 1");
    assert_eq!(err.label(), "protocol");
    let mqtt3 = packet(&[0, 4, b'M', b'Q', b'T', b'T', 3]);
    assert_eq!(read(&mqtt3), Err(ConnectError::NameLevelMismatch { name: "MQTT", level: 3 }));
    let mqisdp6 = packet(&[0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 6]);
    assert_eq!(read(&mqisdp6), Err(ConnectError::UnsupportedLevel { level: 6 }));
}

#[test]
fn reserved_connect_flag_bit_is_malformed() {
    let mut body = header311(0x03);
    body.extend_from_slice(b"\x00\x01c");
    let err = read(&packet(&body)).unwrap_err();
    assert_eq!(err, ConnectError::ReservedFlag { version: ProtocolVersion::V311 });
    assert_eq!(err.label(), "malformed");
    assert_eq!(err.connack(), None);
}

#[test]
fn reserved_connect_flag_bit_in_v5_gets_malformed_connack() {
    let mut body = header5(0x03);
    body.extend_from_slice(b"\x00\x00\x01c");
    let err = read(&packet(&body)).unwrap_err();
    assert_eq!(err.connack(), Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]));
}

#[test]
fn flags_are_checked_before_the_rest_of_the_packet_arrives() {
    let mut buf = vec![0x10, 50];
    buf.extend_from_slice(&header311(0x03)[..8]);
    assert!(matches!(read(&buf), Err(ConnectError::ReservedFlag { .. })));
}

#[test]
fn username_flag_with_truncated_string_is_malformed() {
    let mut body = header311(0x82);
    body.extend_from_slice(b"\x00\x01c\x00\x0aabc"); // username claims 10 bytes, 3 present
    assert_malformed(&packet(&body), ProtocolVersion::V311);
}

#[test]
fn username_length_past_the_packet_is_refused_without_waiting_for_it() {
    let mut body = header311(0x82);
    body.extend_from_slice(b"\x00\x01c\x00\x0aabc");
    let pkt = packet(&body);
    // Only the username length prefix has arrived; it already reaches past the packet.
    assert_malformed(&pkt[..pkt.len() - 3], ProtocolVersion::V311);
}

#[test]
fn username_flag_without_username_field_is_malformed() {
    let mut body = header311(0x82);
    body.extend_from_slice(b"\x00\x01c");
    assert_malformed(&packet(&body), ProtocolVersion::V311);
}

#[test]
fn invalid_utf8_in_username_is_refused() {
    let mut body = header311(0x82);
    body.extend_from_slice(b"\x00\x01c\x00\x02\xc3\x28");
    let err = read(&packet(&body)).unwrap_err();
    assert_eq!(err, ConnectError::InvalidUtf8 { field: "username", version: ProtocolVersion::V311 });
    assert_eq!(err.label(), "utf8");
    assert_eq!(err.connack(), None);
}

#[test]
fn invalid_utf8_in_client_id_is_refused() {
    let mut body = header5(0x02);
    body.extend_from_slice(b"\x00\x00\x01\xff");
    let err = read(&packet(&body)).unwrap_err();
    assert_eq!(err, ConnectError::InvalidUtf8 { field: "client identifier", version: ProtocolVersion::V5 });
    assert_eq!(err.connack(), Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]));
}

#[test]
fn nul_in_client_id_is_refused() {
    let mut body = header311(0x02);
    body.extend_from_slice(b"\x00\x03a\x00b");
    assert!(matches!(read(&packet(&body)), Err(ConnectError::InvalidUtf8 { .. })));
}

#[test]
fn empty_and_multibyte_client_ids_are_accepted() {
    for id in ["", "日本語-🦀"] {
        let mut m = base311();
        m.client_id = id.into();
        let pkt = encode(&m);
        assert_eq!(parse(&pkt).client_id(&pkt), id);
    }
}

#[test]
fn v5_property_length_past_the_packet_is_malformed_as_soon_as_it_arrives() {
    let mut body = header5(0x02);
    body.push(100); // properties length: 100 bytes, the packet has 4 more
    body.extend_from_slice(b"\x00\x01c");
    let pkt = packet(&body);
    let err = assert_malformed(&pkt, ProtocolVersion::V5);
    assert_eq!(err.connack(), Some(vec![0x20, 0x03, 0x00, 0x81, 0x00]));
    assert_malformed(&pkt[..pkt.len() - 3], ProtocolVersion::V5);
}

#[test]
fn v5_property_value_past_its_section_is_malformed() {
    let mut body = header5(0x02);
    body.extend_from_slice(&[3, 0x11, 0, 0]); // session expiry needs 4 bytes, section has 2
    body.extend_from_slice(&[0, 0, 0, 0, 1, b'c']);
    assert_malformed(&packet(&body), ProtocolVersion::V5);
}

#[test]
fn v5_unknown_property_id_is_malformed() {
    let mut body = header5(0x02);
    body.extend_from_slice(&[2, 0x7f, 0, 0, 1, b'c']);
    let err = assert_malformed(&packet(&body), ProtocolVersion::V5);
    assert!(matches!(err, ConnectError::BadProperty { id: 0x7f, .. }));
}

#[test]
fn v5_will_property_in_connect_properties_is_malformed() {
    let mut body = header5(0x02);
    body.extend_from_slice(&[5, 0x18, 0, 0, 0, 9, 0, 1, b'c']);
    let err = assert_malformed(&packet(&body), ProtocolVersion::V5);
    assert!(err.to_string().contains("CONNECT properties"), "{err}");
}

#[test]
fn v5_connect_property_in_will_properties_is_malformed() {
    let mut body = header5(0x06);
    body.extend_from_slice(&[0, 0, 1, b'c']);
    body.extend_from_slice(&[5, 0x11, 0, 0, 0, 9]); // session expiry as a will property
    body.extend_from_slice(&[0, 1, b't', 0, 0]);
    let err = assert_malformed(&packet(&body), ProtocolVersion::V5);
    assert!(err.to_string().contains("will properties"), "{err}");
}

#[test]
fn v5_property_length_longer_than_four_bytes_is_malformed() {
    let mut body = header5(0x02);
    body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x01]);
    assert_malformed(&packet(&body), ProtocolVersion::V5);
}

#[test]
fn trailing_bytes_inside_the_packet_are_malformed() {
    let mut body = header311(0x02);
    body.extend_from_slice(b"\x00\x01c\x00");
    assert_malformed(&packet(&body), ProtocolVersion::V311);
}

#[test]
fn will_qos_3_is_malformed() {
    let mut m = base311();
    m.will = Some(Will { qos: 3, retain: false, props: vec![], topic: "t".into(), payload: vec![] });
    assert_malformed(&encode(&m), ProtocolVersion::V311);
}

#[test]
fn will_qos_without_will_flag_is_malformed() {
    let mut body = header311(0x0a);
    body.extend_from_slice(b"\x00\x01c");
    assert_malformed(&packet(&body), ProtocolVersion::V311);
}

#[test]
fn will_retain_without_will_flag_is_malformed() {
    let mut body = header5(0x22);
    body.extend_from_slice(b"\x00\x00\x01c");
    assert_malformed(&packet(&body), ProtocolVersion::V5);
}

#[test]
fn password_without_username_is_malformed_in_311() {
    let mut m = base311();
    m.password = Some(b"pw".to_vec());
    assert_malformed(&encode(&m), ProtocolVersion::V311);
}

#[test]
fn password_without_username_is_malformed_in_31() {
    let mut m = base(ProtocolVersion::V31);
    m.password = Some(b"pw".to_vec());
    assert_malformed(&encode(&m), ProtocolVersion::V31);
}

#[test]
fn password_without_username_is_allowed_in_5() {
    let mut m = base(ProtocolVersion::V5);
    m.password = Some(b"pw".to_vec());
    let pkt = encode(&m);
    let c = parse(&pkt);
    assert_eq!(c.username(&pkt), None);
    assert!(c.has_password());
}

#[test]
fn will_payload_needing_a_three_byte_remaining_length_parses() {
    let mut m = base(ProtocolVersion::V5);
    m.will = Some(Will {
        qos: 2,
        retain: true,
        props: vec![Prop::U32(0x18, 5)],
        topic: "t".into(),
        payload: vec![7; 20_000],
    });
    let pkt = encode(&m);
    assert_eq!(pkt[1] & 0x80, 0x80);
    assert_eq!(pkt[2] & 0x80, 0x80);
    assert_eq!(parse(&pkt).packet_len(), pkt.len());
}

// ---------------------------------------------------------------------------------------------
// CONNACK rendering and versions
// ---------------------------------------------------------------------------------------------

#[test]
fn connack_uses_3x_return_codes() {
    use Refusal::*;
    for v in [ProtocolVersion::V31, ProtocolVersion::V311] {
        for (r, rc) in [
            (UnsupportedProtocolVersion, 1),
            (IdentifierRejected, 2),
            (ServerUnavailable, 3),
            (BadUsernameOrPassword, 4),
            (NotAuthorized, 5),
        ] {
            assert_eq!(connack(v, r), Some(vec![0x20, 0x02, 0x00, rc]));
        }
    }
}

#[test]
fn connack_has_no_3x_code_for_malformed_or_too_large() {
    for v in [ProtocolVersion::V31, ProtocolVersion::V311] {
        assert_eq!(connack(v, Refusal::Malformed), None);
        assert_eq!(connack(v, Refusal::PacketTooLarge), None);
    }
}

#[test]
fn connack_uses_v5_reason_codes() {
    use Refusal::*;
    for (r, reason) in [
        (UnsupportedProtocolVersion, 0x84),
        (IdentifierRejected, 0x85),
        (ServerUnavailable, 0x88),
        (BadUsernameOrPassword, 0x86),
        (NotAuthorized, 0x87),
        (Malformed, 0x81),
        (PacketTooLarge, 0x95),
    ] {
        assert_eq!(connack(ProtocolVersion::V5, r), Some(vec![0x20, 0x03, 0x00, reason, 0x00]));
    }
}

#[test]
fn protocol_versions_report_level_and_name() {
    assert_eq!(ProtocolVersion::V31.level(), 3);
    assert_eq!(ProtocolVersion::V311.level(), 4);
    assert_eq!(ProtocolVersion::V5.level(), 5);
    assert_eq!(ProtocolVersion::V31.as_str(), "3.1");
    assert_eq!(ProtocolVersion::V311.as_str(), "3.1.1");
    assert_eq!(ProtocolVersion::V5.as_str(), "5.0");
}
