//! The CONNECT editor: rewrites the username, drops the password, replaces the client id, and copies
//! every other byte of the packet the reader found ([`super::connect::read_connect`]) verbatim.

use super::connect::{
    encode_varint, varint_len, Connect, ConnectError, FLAG_PASSWORD, FLAG_USERNAME, MAX_REMAINING_LEN,
};

/// How to rewrite a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Edit<'a> {
    /// Username to present to the broker; `None` keeps whatever the client sent (or didn't).
    pub username: Option<&'a str>,
    /// Remove the client's password (and its flag), e.g. because the certificate authenticated it.
    pub drop_password: bool,
    /// Client identifier to present to the broker in place of the client's; `None` keeps it.
    pub client_id: Option<&'a str>,
}

/// Builds the edited CONNECT.
///
/// Sets the username flag and writes `username` (when `Some`) in place of the client's username
/// field, or inserts it where it belongs (after the will, before the password); removes the
/// password field and clears its flag when `drop_password`; writes `client_id` (when `Some`) in
/// place of the client identifier field. Every other byte is copied verbatim (keep alive, other
/// flags, will, all v5 properties); only the remaining-length varint is recomputed, and its length
/// may change. An edit that changes nothing returns `buf[..packet_len]` unchanged.
///
/// # Errors
/// [`ConnectError::Unencodable`] if the username or client id is longer than 65535 bytes or
/// contains U+0000,
/// [`ConnectError::TooLarge`] if the result would exceed MQTT's maximum remaining length, and
/// [`ConnectError::BufferMismatch`] if `buf` does not hold `connect`.
pub fn edit(buf: &[u8], connect: &Connect, edit: &Edit<'_>) -> Result<Vec<u8>, ConnectError> {
    let c = connect;
    let mismatch = ConnectError::BufferMismatch;
    let whole = buf.get(..c.packet_len).ok_or(mismatch)?;
    let drops_password = edit.drop_password && c.password.is_some();
    if edit.username.is_none() && !drops_password && edit.client_id.is_none() {
        return Ok(whole.to_vec());
    }
    let unencodable = |what| ConnectError::Unencodable { what, version: c.version };

    let username_field: Vec<u8> = match edit.username {
        Some(name) => string_field(name).map_err(|why| {
            unencodable(match why {
                FieldError::Nul => "the new username contains U+0000",
                FieldError::TooLong => "the new username is longer than 65535 bytes",
            })
        })?,
        None => match c.username {
            Some(span) => span.of(buf).ok_or(mismatch)?.to_vec(),
            None => Vec::new(),
        },
    };
    let password_field: &[u8] = match c.password {
        Some(span) if !drops_password => span.of(buf).ok_or(mismatch)?,
        _ => &[],
    };
    let mut flags = buf.get(c.flags_at).copied().ok_or(mismatch)?;
    if edit.username.is_some() {
        flags |= FLAG_USERNAME;
    }
    if drops_password {
        flags &= !FLAG_PASSWORD;
    }

    let before_flags = buf.get(c.body_start..c.flags_at).ok_or(mismatch)?;
    let after_flags_at = c.flags_at.checked_add(1).ok_or(mismatch)?;
    // The client id field (length prefix included) sits between the keep alive / v5 properties and
    // the will: [after_flags_at, id_start) is copied, then the field, then [id_end, creds_at).
    let id_start = c.client_id.start.checked_sub(2).ok_or(mismatch)?;
    let id_end = c.client_id.end;
    let before_id = buf.get(after_flags_at..id_start).ok_or(mismatch)?;
    let client_id_field: Vec<u8> = match edit.client_id {
        Some(id) => string_field(id).map_err(|why| {
            unencodable(match why {
                FieldError::Nul => "the new client identifier contains U+0000",
                FieldError::TooLong => "the new client identifier is longer than 65535 bytes",
            })
        })?,
        None => buf.get(id_start..id_end).ok_or(mismatch)?.to_vec(),
    };
    let after_id = buf.get(id_end..c.creds_at).ok_or(mismatch)?;
    let remaining = before_flags.len()
        + 1
        + before_id.len()
        + client_id_field.len()
        + after_id.len()
        + username_field.len()
        + password_field.len();
    if remaining > MAX_REMAINING_LEN {
        return Err(ConnectError::TooLarge {
            announced: remaining,
            limit: MAX_REMAINING_LEN,
            version: Some(c.version),
        });
    }
    let mut out = Vec::with_capacity(1 + varint_len(remaining) + remaining);
    out.push(0x10);
    encode_varint(remaining, &mut out);
    out.extend_from_slice(before_flags);
    out.push(flags);
    out.extend_from_slice(before_id);
    out.extend_from_slice(&client_id_field);
    out.extend_from_slice(after_id);
    out.extend_from_slice(&username_field);
    out.extend_from_slice(password_field);
    Ok(out)
}

/// Why a string can't be an MQTT UTF-8 string field.
enum FieldError {
    Nul,
    TooLong,
}

/// `s` as an MQTT UTF-8 string field: 2-byte big-endian length, then the bytes.
fn string_field(s: &str) -> Result<Vec<u8>, FieldError> {
    if s.contains('\0') {
        return Err(FieldError::Nul);
    }
    let len = u16::try_from(s.len()).map_err(|_| FieldError::TooLong)?;
    let mut field = Vec::with_capacity(s.len() + 2);
    field.extend_from_slice(&len.to_be_bytes());
    field.extend_from_slice(s.as_bytes());
    Ok(field)
}
