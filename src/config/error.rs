//! What can be wrong with a configuration, and where a value came from.

use std::fmt;
use std::path::PathBuf;

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
