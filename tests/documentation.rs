//! The documentation against the program: the configuration reference in docs/configuration.md
//! (every documented default is the one `mqtls check` reports, every setting `check` prints is
//! documented, every documented flag exists), and the worked example for several listeners,
//! examples/listeners.toml, which docs/configuration.md shows verbatim.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use mqtls::config::{ClientAuth, Config, RunArgs};

/// Settings of the reference table without a fixed default, so nothing to compare: each with the reason.
const NO_FIXED_DEFAULT: [(&str, &str); 5] = [
    ("cert", "required: there is no default, the test passes one"),
    ("key", "required: there is no default, the test passes one"),
    ("client_ca", "required unless client_auth = \"none\": no default, the test passes one"),
    ("threads", "the number of CPUs of the machine that runs it"),
    ("name", "a listener block's position in the file (#1, #2, ...); check prints no key for it"),
];

/// The reference table has at least this many rows; fewer means it was not found whole.
const MIN_ROWS: usize = 20;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn mqtls(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mqtls"))
        .args(args)
        .env_remove("MQTLS_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run mqtls");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mqtls {args:?} failed: {}\n{stdout}\n{stderr}", out.status);
    stdout.into_owned()
}

/// The effective settings `mqtls check` prints when given only what has no default: a server
/// certificate, its key and a client CA (so that `client_auth` keeps its default, `required`).
fn check_defaults() -> toml::Table {
    let pki = common::Pki::new();
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca_file));
    let out = mqtls(&["check", "--cert", &cert, "--key", &key, "--client-ca", &ca]);
    let settings: String = out.lines().filter(|l| !l.trim_start().starts_with('#')).map(|l| format!("{l}\n")).collect();
    toml::from_str(&settings).unwrap_or_else(|e| panic!("mqtls check printed no valid TOML: {e}\n{out}"))
}

/// One row of the reference table.
#[derive(Debug)]
struct Row {
    /// The TOML key (`[[sni]]` → `sni`).
    setting: String,
    flag: String,
    default: String,
}

/// A table row's cells: split at unescaped `|`, `\|` unescaped, trimmed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                chars.next();
                cells.last_mut().expect("a cell").push('|');
            }
            '|' => cells.push(String::new()),
            c => cells.last_mut().expect("a cell").push(c),
        }
    }
    cells.iter().map(|c| c.trim().to_owned()).collect()
}

/// The text inside the backticks of each code span of a cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The configuration reference: the Markdown table of docs/configuration.md whose header has the
/// columns `setting`, `flag` and `default`. Panics if there is none, or if it has too few rows.
fn reference_table() -> Vec<Row> {
    let doc = read("docs/configuration.md");
    let lines: Vec<&str> = doc.lines().collect();
    let (at, header) = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('|'))
        .map(|(i, l)| (i, cells(l)))
        .find(|(_, h)| ["setting", "flag", "default"].iter().all(|c| h.iter().any(|h| h == c)))
        .expect("docs/configuration.md has no table with the columns `setting`, `flag` and `default`");
    let column = |name: &str| header.iter().position(|h| h == name).expect("column");
    let (setting, flag, default) = (column("setting"), column("flag"), column("default"));
    let separator = lines.get(at + 1).map(|l| cells(l)).unwrap_or_default();
    assert!(
        separator.len() == header.len() && separator.iter().all(|c| c.starts_with("---")),
        "docs/configuration.md: the reference table's header is not followed by a separator row"
    );
    let rows: Vec<Row> = lines[at + 2..]
        .iter()
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            let c = cells(l);
            assert_eq!(c.len(), header.len(), "docs/configuration.md: row with a wrong number of cells: {l}");
            let name = *code_spans(&c[setting]).first().unwrap_or_else(|| panic!("no `setting` in row: {l}"));
            Row {
                setting: name.trim_start_matches("[[").trim_end_matches("]]").to_owned(),
                flag: c[flag].clone(),
                default: c[default].clone(),
            }
        })
        .collect();
    assert!(
        rows.len() >= MIN_ROWS,
        "docs/configuration.md: the reference table has {} rows, expected at least {MIN_ROWS}",
        rows.len()
    );
    rows
}

/// What a default cell documents.
#[derive(Debug)]
enum Documented<'a> {
    /// One code span, e.g. `10s`, `262144`, `cn`, `true`: the value `check` must print.
    Value(&'a str),
    /// `none`: `check` prints no value, or an empty list.
    Unset,
    /// Prose, e.g. "required" or "number of CPUs": no fixed default.
    Prose(&'a str),
}

fn documented(cell: &str) -> Documented<'_> {
    let spans = code_spans(cell);
    if spans.len() == 1 && cell.starts_with('`') && cell.ends_with('`') {
        Documented::Value(spans[0])
    } else if cell == "none" {
        Documented::Unset
    } else {
        Documented::Prose(cell)
    }
}

/// Whether the documented `text` is the value `check` printed: as a TOML value (numbers, booleans,
/// quoted strings, lists) or else as a bare string; two strings that are both durations compare as
/// durations (`60s` is printed `1m`).
fn same_value(text: &str, printed: &toml::Value) -> bool {
    let doc = toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()));
    match (&doc, printed) {
        (toml::Value::String(a), toml::Value::String(b)) => {
            a == b || matches!((humantime::parse_duration(a), humantime::parse_duration(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => doc == *printed,
    }
}

#[test]
fn documented_defaults_are_the_defaults_check_prints() {
    let printed = check_defaults();
    let rows = reference_table();
    let mut wrong = Vec::new();
    for (name, reason) in NO_FIXED_DEFAULT {
        let row = rows.iter().find(|r| r.setting == name);
        let row = row.unwrap_or_else(|| panic!("`{name}` is excluded ({reason}) but not in the reference table"));
        assert!(
            matches!(documented(&row.default), Documented::Prose(_)),
            "`{name}` is excluded ({reason}) but documents the default {}: compare it instead",
            row.default
        );
    }
    for row in rows.iter().filter(|r| NO_FIXED_DEFAULT.iter().all(|(name, _)| *name != r.setting)) {
        let got = printed.get(&row.setting);
        let ok = match documented(&row.default) {
            Documented::Value(text) => got.is_some_and(|v| same_value(text, v)),
            Documented::Unset => got.map_or(true, |v| v.as_array().is_some_and(|a| a.is_empty())),
            Documented::Prose(text) => {
                wrong.push(format!("{}: \"{text}\" is no default; document one or exclude it", row.setting));
                continue;
            }
        };
        if !ok {
            let got = got.map_or_else(|| "nothing".to_owned(), |v| v.to_string());
            wrong.push(format!("{}: documented {}, check prints {got}", row.setting, row.default));
        }
    }
    assert!(wrong.is_empty(), "docs/configuration.md disagrees with `mqtls check`:\n{}", wrong.join("\n"));
}

#[test]
fn the_reference_has_every_setting_check_prints_and_only_real_flags() {
    let printed = check_defaults();
    let rows = reference_table();
    let documented: BTreeSet<&str> = rows.iter().map(|r| r.setting.as_str()).collect();
    let missing: Vec<&String> = printed.keys().filter(|k| !documented.contains(k.as_str())).collect();
    assert!(missing.is_empty(), "settings `mqtls check` prints but docs/configuration.md does not: {missing:?}");

    let help = mqtls(&["--help"]);
    let options: BTreeSet<&str> =
        help.lines().filter_map(|l| l.trim_start().split([' ', ',', '[']).find(|w| w.starts_with("--"))).collect();
    for row in &rows {
        if row.flag.starts_with("file only") {
            continue;
        }
        let flag = code_spans(&row.flag).first().and_then(|f| f.split(' ').next()).unwrap_or_default();
        assert!(options.contains(flag), "{}: the flag {} is not an option of `mqtls --help`", row.setting, row.flag);
    }
}

#[test]
fn the_several_listeners_example_is_valid() {
    let path = repo("examples/listeners.toml");
    let all = Config::load(&RunArgs { config: Some(path), ..Default::default() })
        .expect("examples/listeners.toml is valid")
        .listeners;
    let names: Vec<_> = all.iter().map(|c| c.name.clone().unwrap_or_default()).collect();
    assert_eq!(names, ["devices", "passwords", "https-port"]);
    assert_eq!(all[1].tls.client_auth, ClientAuth::Optional);
    assert_eq!(all[2].tls.alpn, ["x-amzn-mqtt-ca", "mqtt"]);
    assert_eq!(all[2].tls.sni.len(), 1);
    assert!(all[0].tls.sni.is_empty() && all[0].tls.alpn.is_empty());
}

#[test]
fn the_configuration_doc_shows_the_several_listeners_example_verbatim() {
    let example = read("examples/listeners.toml");
    let doc = read("docs/configuration.md");
    assert!(
        doc.contains(&format!("```toml\n{example}```\n")),
        "docs/configuration.md must show examples/listeners.toml as a ```toml block, unchanged"
    );
}
