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
    #[serde(serialize_with = "millis_opt")]
    pub upstream_ms: Option<f64>,
    /// Total time, to the end of the response body, in milliseconds.
    #[serde(serialize_with = "millis")]
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

/// Writes a duration in milliseconds with at most 3 decimals (microseconds): `0.323`, not the
/// `0.32310900000000004` that `as_secs_f64() * 1e3` gives. Rounding to a whole number of
/// microseconds and dividing by 1000 gives the double nearest that decimal, which serde_json's
/// shortest round-trip printing writes with no more digits. For `#[serde(serialize_with)]`; a
/// handful of float operations, next to the formatting they shorten.
pub fn millis<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms * 1e3).round() / 1e3)
}

/// [`millis`] for a duration that may be missing (`null`).
pub fn millis_opt<S: serde::Serializer>(ms: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => millis(ms, s),
        None => s.serialize_none(),
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
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400 + 3661, 5), "2000-02-29T01:01:01.005Z");
        assert_eq!(rfc3339(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
    }

    fn entry(upstream: Option<Duration>, total: Duration) -> String {
        // As the proxy fills them in.
        serde_json::to_string(&Entry {
            time: rfc3339(0, 0),
            request_id: "r",
            client: "127.0.0.1:1".into(),
            method: "GET",
            host: "h",
            path: "/",
            status: 200,
            cluster: None,
            endpoint: None,
            attempts: 1,
            tried: &[],
            upstream_ms: upstream.map(|d| d.as_secs_f64() * 1e3),
            total_ms: total.as_secs_f64() * 1e3,
            reason: None,
        })
        .unwrap()
    }

    #[test]
    fn durations_are_written_in_milliseconds_with_at_most_three_decimals() {
        let line = entry(
            Some(Duration::from_nanos(323_109)),
            Duration::from_nanos(1_234_567_891),
        );
        assert!(
            line.contains(r#""upstream_ms":0.323,"total_ms":1234.568,"#),
            "{line}"
        );
        // Whole numbers of milliseconds, sub-microsecond and missing ones.
        let line = entry(None, Duration::from_millis(7));
        assert!(
            line.contains(r#""upstream_ms":null,"total_ms":7.0,"#),
            "{line}"
        );
        let line = entry(Some(Duration::from_nanos(499)), Duration::from_nanos(1_600));
        assert!(
            line.contains(r#""upstream_ms":0.0,"total_ms":0.002,"#),
            "{line}"
        );
        // Every duration up to a second, by steps that hit many binary fractions: no more than
        // 3 decimals, and within half a microsecond.
        for nanos in (0..1_000_000_000u64).step_by(999_983) {
            let d = Duration::from_nanos(nanos);
            let v: serde_json::Value = serde_json::from_str(&entry(Some(d), d)).unwrap();
            let text = v["total_ms"].to_string();
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            assert!(decimals <= 3, "{nanos} ns: {text}");
            let ms = v["total_ms"].as_f64().unwrap();
            assert!(
                (ms * 1e6 - nanos as f64).abs() <= 500.0 + 1e-6,
                "{nanos} ns: {text}"
            );
        }
    }
}
