//! Valid CONNECTs of all three versions, built from a model by a small encoder, then edited.
//!
//! The editor must produce exactly what the encoder produces for the same model with only the
//! username, password and client id changed: every other byte (flags aside from the username/password bits,
//! keep alive, client id, will, every v5 property in its original order) is copied, and only the
//! remaining length is recomputed.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mqtls::mqtt::connect::{edit, read_connect, ConnectError, Edit, ProtocolVersion, DEFAULT_MAX_CONNECT_LEN};

#[path = "../checks/connect_roundtrip.rs"]
mod connect_roundtrip;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq)]
enum Version {
    V31,
    V311,
    V5,
}

impl Version {
    fn protocol(self) -> ProtocolVersion {
        match self {
            Self::V31 => ProtocolVersion::V31,
            Self::V311 => ProtocolVersion::V311,
            Self::V5 => ProtocolVersion::V5,
        }
    }
}

/// MQTT 5 CONNECT properties (section 3.1.2.11); values are not range-checked by the reader.
#[derive(Arbitrary, Debug, Clone)]
enum ConnectProp {
    SessionExpiry(u32),
    ReceiveMaximum(u16),
    MaximumPacketSize(u32),
    TopicAliasMaximum(u16),
    RequestResponseInfo(u8),
    RequestProblemInfo(u8),
    User(String, String),
    AuthMethod(String),
    AuthData(Vec<u8>),
}

/// MQTT 5 will properties (section 3.1.3.2).
#[derive(Arbitrary, Debug, Clone)]
enum WillProp {
    DelayInterval(u32),
    PayloadFormat(u8),
    MessageExpiry(u32),
    ContentType(String),
    ResponseTopic(String),
    CorrelationData(Vec<u8>),
    User(String, String),
}

/// Will QoS 0, 1 or 2 (3 is invalid, and refused by the reader).
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Qos {
    Zero = 0,
    One = 1,
    Two = 2,
}

#[derive(Arbitrary, Debug, Clone)]
struct Will {
    qos: Qos,
    retain: bool,
    props: Vec<WillProp>,
    topic: String,
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone)]
struct Model {
    version: Version,
    clean: bool,
    keep_alive: u16,
    props: Vec<ConnectProp>,
    client_id: String,
    will: Option<Will>,
    username: Option<String>,
    password: Option<Vec<u8>>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    model: Model,
    new_username: Option<String>,
    drop_password: bool,
    new_client_id: Option<String>,
    pipelined: Vec<u8>,
}

impl Model {
    /// Makes the model a valid CONNECT: no U+0000 in strings, no properties before v5, and no
    /// password without a username before v5.
    fn normalise(&mut self) {
        for s in self.strings() {
            s.retain(|ch| ch != '\0');
        }
        if self.version != Version::V5 {
            self.props.clear();
            if let Some(w) = &mut self.will {
                w.props.clear();
            }
            if self.username.is_none() {
                self.password = None;
            }
        }
    }

    fn strings(&mut self) -> Vec<&mut String> {
        let mut out = vec![&mut self.client_id];
        out.extend(self.username.as_mut());
        for p in &mut self.props {
            match p {
                ConnectProp::User(k, v) => out.extend([k, v]),
                ConnectProp::AuthMethod(s) => out.push(s),
                _ => {}
            }
        }
        if let Some(w) = &mut self.will {
            out.push(&mut w.topic);
            for p in &mut w.props {
                match p {
                    WillProp::User(k, v) => out.extend([k, v]),
                    WillProp::ContentType(s) | WillProp::ResponseTopic(s) => out.push(s),
                    _ => {}
                }
            }
        }
        out
    }
}

/// Appends a u16-length-prefixed field; `None` if it is too long for MQTT.
fn put_bin(bytes: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

fn put_varint(mut v: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (v & 0x7f) as u8;
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

/// A fixed-width property: its id, then its big-endian value.
fn put_fixed(out: &mut Vec<u8>, id: u8, value: &[u8]) {
    out.push(id);
    out.extend_from_slice(value);
}

/// A string or binary property: its id, then its length-prefixed value.
fn put_field(out: &mut Vec<u8>, id: u8, value: &[u8]) -> Option<()> {
    out.push(id);
    put_bin(value, out)
}

fn put_prop_section(body: &[u8], out: &mut Vec<u8>) {
    put_varint(body.len(), out);
    out.extend_from_slice(body);
}

fn connect_props(props: &[ConnectProp]) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    for p in props {
        match p {
            ConnectProp::SessionExpiry(v) => put_fixed(&mut b, 0x11, &v.to_be_bytes()),
            ConnectProp::ReceiveMaximum(v) => put_fixed(&mut b, 0x21, &v.to_be_bytes()),
            ConnectProp::MaximumPacketSize(v) => put_fixed(&mut b, 0x27, &v.to_be_bytes()),
            ConnectProp::TopicAliasMaximum(v) => put_fixed(&mut b, 0x22, &v.to_be_bytes()),
            ConnectProp::RequestResponseInfo(v) => put_fixed(&mut b, 0x19, &[*v]),
            ConnectProp::RequestProblemInfo(v) => put_fixed(&mut b, 0x17, &[*v]),
            ConnectProp::User(k, v) => {
                b.push(0x26);
                put_bin(k.as_bytes(), &mut b)?;
                put_bin(v.as_bytes(), &mut b)?;
            }
            ConnectProp::AuthMethod(s) => put_field(&mut b, 0x15, s.as_bytes())?,
            ConnectProp::AuthData(d) => put_field(&mut b, 0x16, d)?,
        }
    }
    Some(b)
}

fn will_props(props: &[WillProp]) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    for p in props {
        match p {
            WillProp::DelayInterval(v) => put_fixed(&mut b, 0x18, &v.to_be_bytes()),
            WillProp::PayloadFormat(v) => put_fixed(&mut b, 0x01, &[*v]),
            WillProp::MessageExpiry(v) => put_fixed(&mut b, 0x02, &v.to_be_bytes()),
            WillProp::ContentType(s) => put_field(&mut b, 0x03, s.as_bytes())?,
            WillProp::ResponseTopic(s) => put_field(&mut b, 0x08, s.as_bytes())?,
            WillProp::CorrelationData(d) => put_field(&mut b, 0x09, d)?,
            WillProp::User(k, v) => {
                b.push(0x26);
                put_bin(k.as_bytes(), &mut b)?;
                put_bin(v.as_bytes(), &mut b)?;
            }
        }
    }
    Some(b)
}

/// The CONNECT for `m`, or `None` if a field is too long for MQTT to encode.
fn encode(m: &Model) -> Option<Vec<u8>> {
    let v5 = m.version == Version::V5;
    let mut b = Vec::new();
    put_bin(if m.version == Version::V31 { b"MQIsdp" } else { b"MQTT" }, &mut b)?;
    b.push(m.version.protocol().level());
    let mut flags = 0u8;
    if m.username.is_some() {
        flags |= 0x80;
    }
    if m.password.is_some() {
        flags |= 0x40;
    }
    if let Some(w) = &m.will {
        flags |= 0x04 | ((w.qos as u8) << 3);
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
        put_prop_section(&connect_props(&m.props)?, &mut b);
    }
    put_bin(m.client_id.as_bytes(), &mut b)?;
    if let Some(w) = &m.will {
        if v5 {
            put_prop_section(&will_props(&w.props)?, &mut b);
        }
        put_bin(w.topic.as_bytes(), &mut b)?;
        put_bin(&w.payload, &mut b)?;
    }
    if let Some(u) = &m.username {
        put_bin(u.as_bytes(), &mut b)?;
    }
    if let Some(p) = &m.password {
        put_bin(p, &mut b)?;
    }
    let mut out = vec![0x10];
    put_varint(b.len(), &mut out);
    out.extend_from_slice(&b);
    Some(out)
}

fuzz_target!(|input: Input| {
    let Input { mut model, new_username, drop_password, new_client_id, pipelined } = input;
    model.normalise();
    let Some(pkt) = encode(&model) else { return };
    let mut buf = pkt.clone();
    buf.extend_from_slice(&pipelined);

    let c = match read_connect(&buf, DEFAULT_MAX_CONNECT_LEN) {
        Ok(Some(c)) => c,
        other => panic!("valid CONNECT not accepted: {other:?}\n{model:?}"),
    };
    assert_eq!(c.packet_len(), pkt.len());
    assert_eq!(c.version(), model.version.protocol());
    assert_eq!(c.client_id(&buf), model.client_id);
    assert_eq!(c.username(&buf), model.username.as_deref());
    assert_eq!(c.has_password(), model.password.is_some());
    assert_eq!(c.has_will(), model.will.is_some());

    let e = Edit { username: new_username.as_deref(), drop_password, client_id: new_client_id.as_deref() };
    let result = edit(&buf, &c, &e);
    let unencodable = |s: Option<&str>| s.is_some_and(|s| s.contains('\0') || s.len() > usize::from(u16::MAX));
    if unencodable(new_username.as_deref()) || unencodable(new_client_id.as_deref()) {
        assert!(matches!(result, Err(ConnectError::Unencodable { .. })), "{result:?}");
        return;
    }
    let out = result.unwrap_or_else(|err| panic!("edit failed: {err}"));

    let mut expected = model.clone();
    if new_username.is_some() {
        expected.username = new_username;
    }
    if drop_password {
        expected.password = None;
    }
    if let Some(id) = new_client_id {
        expected.client_id = id;
    }
    let Some(expected_pkt) = encode(&expected) else { return };
    assert_eq!(out, expected_pkt, "edit changed more than username/password/client id/remaining length");
    match read_connect(&out, DEFAULT_MAX_CONNECT_LEN) {
        Ok(Some(c2)) => assert_eq!(c2.packet_len(), out.len()),
        other => panic!("edited CONNECT does not re-parse: {other:?}"),
    }

    // The raw target's checks hold for generated CONNECTs too (with pipelined bytes behind them).
    connect_roundtrip::check_connect_roundtrip(&buf);
});
