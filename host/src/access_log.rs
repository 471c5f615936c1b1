//! The access log: one JSON line per request, written by a background thread so the request path
//! never waits on a file or the terminal and takes no shared lock.

use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

/// One request as logged.
#[derive(Serialize, Debug)]
pub struct Entry<'a> {
    /// When the request finished, RFC 3339 UTC.
    pub time: String,
    /// The request id.
    pub request_id: &'a str,
    /// Client address.
    pub client: String,
    /// Method.
    pub method: &'a str,
    /// Host asked for.
    pub host: &'a str,
    /// Path (without the query).
    pub path: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Cluster, when one was chosen.
    pub cluster: Option<&'a str>,
    /// Endpoint that answered, when one did.
    pub endpoint: Option<&'a str>,
    /// Upstream tries (0 when none was made).
    pub attempts: u32,
    /// Endpoints tried, in order, when more than one was.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub tried: &'a [&'a str],
    /// Time to the upstream's response headers, in milliseconds.
    pub upstream_ms: Option<f64>,
    /// Total time, to the end of the response body, in milliseconds.
    pub total_ms: f64,
    /// Why the proxy answered by itself.
    pub reason: Option<&'a str>,
}

/// Where access log lines go. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
}

impl AccessLog {
    /// A log that writes nothing.
    pub fn disabled() -> Self {
        AccessLog { tx: None }
    }

    /// A log to stdout.
    pub fn stdout() -> Self {
        Self::to_writer(std::io::stdout())
    }

    /// A log appended to `path`.
    pub fn file(path: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::to_writer(f))
    }

    /// A log written to `w` by a background thread, flushed whenever it catches up.
    pub fn to_writer(w: impl Write + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut w = std::io::BufWriter::new(w);
                while let Ok(line) = rx.recv() {
                    let _ = writeln!(w, "{line}");
                    while let Ok(line) = rx.try_recv() {
                        let _ = writeln!(w, "{line}");
                    }
                    let _ = w.flush();
                }
            })
            .expect("spawning the access log thread");
        AccessLog { tx: Some(tx) }
    }

    /// Whether lines are written at all (callers skip building entries otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Writes one entry (an [`Entry`] for HTTP requests; L4 connections log their own shape).
    pub fn write(&self, entry: &impl Serialize) {
        if let Some(tx) = &self.tx
            && let Ok(line) = serde_json::to_string(entry)
        {
            let _ = tx.send(line);
        }
    }
}

/// `now` as RFC 3339 UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400 + 3661, 5), "2000-02-29T01:01:01.005Z");
        assert_eq!(rfc3339(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
    }
}
