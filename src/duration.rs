//! Durations as people write them in the file and on the command line ("10s", "500ms", "off").

use std::time::Duration;

/// Parses "10s", "1m 30s", "500ms".
pub(crate) fn parse(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 10s or 500ms ({e})"))
}

/// "off" or a zero duration ("0", "0s") turns a periodic task off.
pub(crate) fn is_off(s: &str) -> bool {
    let s = s.trim();
    s.eq_ignore_ascii_case("off") || s == "0" || parse(s).is_ok_and(|d| d.is_zero())
}

/// For `#[serde(serialize_with)]`: a duration in the form the file takes.
pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// For `#[serde(serialize_with)]`: an optional period, `"off"` when there is none.
pub(crate) fn serialize_or_off<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => serialize(d, s),
        None => s.serialize_str("off"),
    }
}
