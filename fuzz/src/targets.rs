//! The in-process target: the config loader, which reads files written by hand (and by tools) and
//! must answer every mistake with an error that names its line, never a panic.

use crate::Target;
use crate::net::HANG;
use sluicegate_config::{Config, ConfigError};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// `Config::parse` on mutated TOML: it never panics, and every error names a line of the text.
pub struct ConfigTarget {
    /// Relative paths in a config resolve from here: a directory that does not exist, so that no
    /// input reads a real file.
    base: PathBuf,
}

impl ConfigTarget {
    /// The target.
    pub fn new() -> ConfigTarget {
        ConfigTarget {
            base: std::env::temp_dir().join("sluicegate-fuzz-no-such-dir"),
        }
    }
}

impl Default for ConfigTarget {
    fn default() -> Self {
        ConfigTarget::new()
    }
}

const CONFIG_DICT: &[&[u8]] = &[
    b"\n",
    b"[[clusters]]\n",
    b"[[clusters.endpoints]]\n",
    b"[[listeners]]\n",
    b"[[listeners.sni_routes]]\n",
    b"[[routes]]\n",
    b"[admin]\n",
    b"[limits]\n",
    b"[plugins]\n",
    b"[access_log]\n",
    b"[health_check]\n",
    b"address = \"127.0.0.1:0\"\n",
    b"name = \"web\"\n",
    b"cluster = \"web\"\n",
    b"protocol = \"tcp\"\n",
    b"protocol = \"tls-passthrough\"\n",
    b"protocol = \"https\"\n",
    b"path_prefix = \"/\"\n",
    b"max_request_body = \"1KB\"\n",
    b"max_header_size = \"8KB\"\n",
    b"header_read_timeout = \"1s\"\n",
    b"proxy_protocol_from = [\"127.0.0.1/32\"]\n",
    b"weight = 0\n",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"=",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"#",
    b"\\u0000",
    b"\xc3\xa9",
    b"\xf0\x9f\x92\xa9",
    b"\r\n",
    b"ms",
    b"GB",
];

/// Whether `line` (1-based) is a line of `text`: one past the last newline counts (an error at the
/// end of the text).
fn within(text: &str, line: usize, column: usize) -> bool {
    line >= 1 && line <= text.matches('\n').count() + 1 && column >= 1
}

impl Target for ConfigTarget {
    fn name(&self) -> &'static str {
        "config"
    }

    fn dict(&self) -> &'static [&'static [u8]] {
        CONFIG_DICT
    }

    fn max_len(&self) -> usize {
        16 * 1024
    }

    fn run(&mut self, input: &[u8]) -> Result<String, String> {
        // The loader reads text (`read_to_string`): bytes that are not UTF-8 never reach `parse`, so
        // the fuzzer gives it their lossy reading.
        let text = String::from_utf8_lossy(input);
        let start = std::time::Instant::now();
        let parsed = catch_unwind(AssertUnwindSafe(|| {
            Config::parse(&text, "fuzz.toml", &self.base)
        }))
        .map_err(|panic| format!("Config::parse panicked: {}", panic_text(&*panic)))?;
        // A hang bound, far above the milliseconds a 16 KB config takes even in a debug build on a
        // loaded machine: a loader stuck on some input is a finding like a panic.
        if start.elapsed() > HANG {
            return Err(format!("Config::parse took {:?}", start.elapsed()));
        }
        match parsed {
            Ok(_) => Ok("ok".into()),
            Err(ConfigError::Invalid {
                at, key, message, ..
            }) => {
                if !within(&text, at.line, at.column) {
                    return Err(format!(
                        "error at {}:{} outside the text ({} lines): {key}: {message}",
                        at.line,
                        at.column,
                        text.lines().count()
                    ));
                }
                // The signature: the message's first plain words, not the names or values it
                // quotes (a mutated key or value is not a new behaviour of the loader).
                let words: Vec<&str> = message
                    .split_whitespace()
                    .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
                    .take(4)
                    .collect();
                Ok(format!("invalid: {}", words.join(" ")))
            }
            Err(ConfigError::Plugin { at, key, .. }) => {
                if !within(&text, at.line, at.column) {
                    return Err(format!(
                        "plugin error at {}:{} outside the text",
                        at.line, at.column
                    ));
                }
                Ok(format!("plugin {key}"))
            }
            Err(e @ (ConfigError::Io { .. } | ConfigError::Other { .. })) => {
                Err(format!("an error of config text that names no line: {e}"))
            }
        }
    }
}

/// The message of a caught panic.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not text)".into())
}
