//! What one line says and how it is spelled: a request's or an L4 connection's values, written as
//! JSON or from a text template straight into the worker's buffer, with no allocation.

use crate::headers;
use crate::plugin::RequestHead;
use http::Version;
use http::header::{REFERER, USER_AGENT};
use sluicegate_config::{LogField, LogFormat, TextPart};
use std::cell::Cell;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A request as logged, when its response has ended.
pub(crate) struct RequestLine<'a> {
    pub head: &'a RequestHead,
    pub status: u16,
    pub bytes_sent: u64,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub attempts: u32,
    /// Endpoints tried, when more than one was.
    pub tried: &'a [&'a str],
    pub upstream: Option<Duration>,
    pub total: Duration,
    pub reason: Option<&'a str>,
}

/// An L4 (tcp, tls-passthrough) connection as logged, when it has closed. Its shape is fixed:
/// JSON with every value, or in text the columns of the default template.
pub(crate) struct ConnectionLine<'a> {
    pub connection_id: &'a str,
    pub protocol: &'static str,
    pub listener: SocketAddr,
    pub client: SocketAddr,
    pub sni: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub attempts: u32,
    pub tried: &'a [&'a str],
    pub from_client: u64,
    pub to_client: u64,
    pub connect: Option<Duration>,
    pub duration: Duration,
    pub reason: Option<&'a str>,
}

/// A line's shape as the config gives it, with each JSON key spelled out once (`,"time":`), so a
/// line copies its keys instead of spelling them.
#[derive(Debug)]
pub(crate) enum Format {
    Json(Vec<(LogField, Box<[u8]>)>),
    Text(Vec<TextPart>),
}

impl Format {
    pub(crate) fn new(format: &LogFormat) -> Format {
        match format {
            LogFormat::Json(fields) => Format::Json(
                fields
                    .iter()
                    .map(|f| (*f, format!(",\"{}\":", f.name()).into_bytes().into()))
                    .collect(),
            ),
            LogFormat::Text(parts) => Format::Text(parts.clone()),
        }
    }
}

/// One value, spelled per format.
enum Value<'a> {
    Text(&'a [u8]),
    Count(u64),
    Millis(Duration),
    Missing,
    Time,
    TimeLocal,
    Addr(SocketAddr),
    Ip(IpAddr),
    /// `GET /path?query HTTP/1.1`.
    Request(&'a RequestHead),
    List(&'a [&'a str]),
}

impl<'a> RequestLine<'a> {
    fn value(&self, field: LogField) -> Value<'a> {
        let head = self.head;
        let text = |s: Option<&'a str>| s.map_or(Value::Missing, |s| Value::Text(s.as_bytes()));
        match field {
            LogField::Time => Value::Time,
            LogField::TimeLocal => Value::TimeLocal,
            LogField::RequestId => Value::Text(head.request_id.as_str().as_bytes()),
            LogField::Client => Value::Addr(head.client),
            LogField::ClientIp => Value::Ip(head.client.ip()),
            LogField::Method => Value::Text(head.parts.method.as_str().as_bytes()),
            LogField::Host => Value::Text(
                headers::request_authority(&head.parts.uri, &head.parts.headers)
                    .unwrap_or("")
                    .as_bytes(),
            ),
            LogField::Path => Value::Text(head.parts.uri.path().as_bytes()),
            LogField::Query => text(head.parts.uri.query()),
            LogField::Request => Value::Request(head),
            LogField::Protocol => Value::Text(version(head.parts.version).as_bytes()),
            LogField::Status => Value::Count(self.status.into()),
            LogField::BytesSent => Value::Count(self.bytes_sent),
            LogField::Cluster => text(self.cluster),
            LogField::Endpoint => text(self.endpoint),
            LogField::Attempts => Value::Count(self.attempts.into()),
            LogField::Tried => Value::List(self.tried),
            LogField::UpstreamMs => self.upstream.map_or(Value::Missing, Value::Millis),
            LogField::TotalMs => Value::Millis(self.total),
            LogField::Reason => text(self.reason),
            LogField::UserAgent => head
                .parts
                .headers
                .get(USER_AGENT)
                .map_or(Value::Missing, |v| Value::Text(v.as_bytes())),
            LogField::Referer => head
                .parts
                .headers
                .get(REFERER)
                .map_or(Value::Missing, |v| Value::Text(v.as_bytes())),
        }
    }

    /// Appends the line, newline included.
    pub(crate) fn write(&self, format: &Format, out: &mut Vec<u8>) {
        let clock = Clock::now();
        match format {
            Format::Json(fields) => {
                out.push(b'{');
                let mut first = true;
                for (field, key) in fields {
                    // An empty list of tries is left out, as earlier versions did.
                    if *field == LogField::Tried && self.tried.is_empty() {
                        continue;
                    }
                    // The first key without its comma.
                    out.extend_from_slice(&key[usize::from(std::mem::take(&mut first))..]);
                    json_value(out, &self.value(*field), &clock);
                }
                out.extend_from_slice(b"}\n");
            }
            Format::Text(parts) => {
                for part in parts {
                    match part {
                        TextPart::Literal(s) => out.extend_from_slice(s.as_bytes()),
                        TextPart::Field(f) => text_value(out, &self.value(*f), &clock),
                    }
                }
                out.push(b'\n');
            }
        }
    }
}

impl<'a> ConnectionLine<'a> {
    /// Appends the line, newline included.
    pub(crate) fn write(&self, format: &Format, out: &mut Vec<u8>) {
        let clock = Clock::now();
        let text = |s: Option<&'a str>| s.map_or(Value::Missing, |s| Value::Text(s.as_bytes()));
        let connect = self.connect.map_or(Value::Missing, Value::Millis);
        if let Format::Text(_) = format {
            // The default template's columns: the request is the protocol and listener, the
            // status `-`, the bytes those sent to the client.
            let mut v = |value: Value, after: &[u8]| {
                text_value(out, &value, &clock);
                out.extend_from_slice(after);
            };
            v(Value::Ip(self.client.ip()), b" - - [");
            v(Value::TimeLocal, b"] \"");
            v(Value::Text(self.protocol.as_bytes()), b" ");
            v(Value::Addr(self.listener), b"\" - ");
            v(Value::Count(self.to_client), b" \"-\" \"-\" ");
            v(Value::Text(self.connection_id.as_bytes()), b" ");
            v(connect, b" ");
            v(Value::Millis(self.duration), b"\n");
            return;
        }
        let values = [
            ("time", Value::Time),
            ("connection_id", Value::Text(self.connection_id.as_bytes())),
            ("protocol", Value::Text(self.protocol.as_bytes())),
            ("listener", Value::Addr(self.listener)),
            ("client", Value::Addr(self.client)),
            ("sni", text(self.sni)),
            ("cluster", text(self.cluster)),
            ("endpoint", text(self.endpoint)),
            ("attempts", Value::Count(self.attempts.into())),
            ("tried", Value::List(self.tried)),
            ("bytes_from_client", Value::Count(self.from_client)),
            ("bytes_to_client", Value::Count(self.to_client)),
            ("connect_ms", connect),
            ("duration_ms", Value::Millis(self.duration)),
            ("reason", text(self.reason)),
        ];
        out.push(b'{');
        let mut first = true;
        for (name, value) in &values {
            if name == &"tried" && self.tried.is_empty() {
                continue;
            }
            json_key(out, name, &mut first);
            json_value(out, value, &clock);
        }
        out.extend_from_slice(b"}\n");
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `"name":`, after a comma unless it is the first key (L4 lines, whose keys are fixed).
fn json_key(out: &mut Vec<u8>, name: &str, first: &mut bool) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn json_value(out: &mut Vec<u8>, value: &Value, clock: &Clock) {
    match value {
        Value::Text(s) => {
            out.push(b'"');
            json_escape(out, s);
            out.push(b'"');
        }
        Value::Count(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
        Value::Millis(d) => millis(out, *d),
        Value::Missing => out.extend_from_slice(b"null"),
        Value::Time => {
            out.push(b'"');
            clock.rfc3339(out);
            out.push(b'"');
        }
        Value::TimeLocal => {
            out.push(b'"');
            out.extend_from_slice(&clock.clf);
            out.push(b'"');
        }
        // Addresses need no escaping.
        Value::Addr(a) => {
            out.push(b'"');
            addr(out, *a);
            out.push(b'"');
        }
        Value::Ip(ip) => {
            out.push(b'"');
            ip_addr(out, *ip);
            out.push(b'"');
        }
        Value::Request(head) => {
            out.push(b'"');
            request(out, head, json_escape);
            out.push(b'"');
        }
        Value::List(items) => {
            out.push(b'[');
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_value(out, &Value::Text(s.as_bytes()), clock);
            }
            out.push(b']');
        }
    }
}

fn text_value(out: &mut Vec<u8>, value: &Value, clock: &Clock) {
    match value {
        Value::Text([]) | Value::Missing => out.push(b'-'),
        Value::Text(s) => text_escape(out, s),
        Value::Count(_) | Value::Millis(_) => json_value(out, value, clock),
        Value::Time => clock.rfc3339(out),
        Value::TimeLocal => out.extend_from_slice(&clock.clf),
        Value::Addr(a) => addr(out, *a),
        Value::Ip(ip) => ip_addr(out, *ip),
        Value::Request(head) => request(out, head, text_escape),
        Value::List([]) => out.push(b'-'),
        Value::List(items) => {
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                text_escape(out, s.as_bytes());
            }
        }
    }
}

/// `GET /path?query HTTP/1.1`, each part escaped by `escape`.
fn request(out: &mut Vec<u8>, head: &RequestHead, escape: fn(&mut Vec<u8>, &[u8])) {
    let uri = &head.parts.uri;
    escape(out, head.parts.method.as_str().as_bytes());
    out.push(b' ');
    escape(out, uri.path().as_bytes());
    if let Some(q) = uri.query() {
        out.push(b'?');
        escape(out, q.as_bytes());
    }
    out.push(b' ');
    out.extend_from_slice(version(head.parts.version).as_bytes());
}

/// `192.0.2.7:4242`; IPv4 without the formatting machinery, which costs more than the rest of a
/// line (`[::1]:4242` for IPv6, through it).
fn addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            ip_addr(out, IpAddr::V4(*v4.ip()));
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn ip_addr(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Whether `s` is printable ASCII with no quote or backslash: written as is in both formats, as
/// nearly every value is. No early exit, so the loop is vectorized.
fn plain(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| {
        ok & ((0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\'))
    })
}

/// A JSON string's contents: quotes, backslashes and control characters escaped; bytes that are
/// not UTF-8 (header values may be anything) become U+FFFD, so every line stays valid JSON.
fn json_escape(out: &mut Vec<u8>, s: &[u8]) {
    if plain(s) {
        out.extend_from_slice(s);
        return;
    }
    for chunk in s.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..0x20 | 0x7f => {
                    let _ = write!(out, "\\u{b:04x}");
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

/// Text as nginx writes it: printable ASCII as is, `"`, `\` and every other byte as `\xHH`, so a
/// value can neither end its quotes nor the line.
fn text_escape(out: &mut Vec<u8>, s: &[u8]) {
    if plain(s) {
        out.extend_from_slice(s);
        return;
    }
    for &b in s {
        match b {
            b'"' | b'\\' => {
                let _ = write!(out, "\\x{b:02X}");
            }
            0x20..0x7f => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02X}");
            }
        }
    }
}

/// A duration in milliseconds with at most 3 decimals (whole microseconds, rounded): `0.323`,
/// `7.0`, `1234.568`, as a JSON number.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let micros = (d.as_nanos() + 500) / 1000;
    let (whole, frac) = ((micros / 1000) as u64, (micros % 1000) as u32);
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    out.push(b'.');
    let digits = [frac / 100, frac / 10 % 10, frac % 10].map(|d| b'0' + d as u8);
    let keep = match frac {
        0 => 1,
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    out.extend_from_slice(&digits[..keep]);
}

/// The time of a line, with the date and time of its second spelled once per second per thread.
#[derive(Clone, Copy)]
struct Clock {
    millis: u32,
    /// `2026-12-08T02:00:00`.
    iso: [u8; 19],
    /// `08/Dec/2026:02:00:00 +0000`.
    clf: [u8; 26],
}

thread_local! {
    static CLOCK: Cell<(u64, Clock)> = const {
        Cell::new((u64::MAX, Clock { millis: 0, iso: [0; 19], clf: [0; 26] }))
    };
}

impl Clock {
    fn now() -> Clock {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock::at(d.as_secs(), d.subsec_millis())
    }

    fn at(secs: u64, millis: u32) -> Clock {
        CLOCK.with(|cached| {
            let (at, mut clock) = cached.get();
            if at != secs {
                clock = Clock::spell(secs);
                cached.set((secs, clock));
            }
            clock.millis = millis;
            clock
        })
    }

    fn spell(secs: u64) -> Clock {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
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
        let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
        let mut clock = Clock {
            millis: 0,
            iso: [0; 19],
            clf: [0; 26],
        };
        let _ = write!(
            &mut clock.iso[..],
            "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}"
        );
        let _ = write!(
            &mut clock.clf[..],
            "{day:02}/{}/{year:04}:{h:02}:{m:02}:{s:02} +0000",
            MONTHS[(month - 1) as usize]
        );
        clock
    }

    /// `2026-12-08T02:00:00.123Z`.
    fn rfc3339(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.iso);
        let m = self.millis;
        out.extend_from_slice(&[
            b'.',
            b'0' + (m / 100) as u8,
            b'0' + (m / 10 % 10) as u8,
            b'0' + (m % 10) as u8,
            b'Z',
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicegate_config::{DEFAULT_JSON_FIELDS, DEFAULT_TEMPLATE, parse_template};

    fn head(target: &str, headers: &[(&str, &[u8])]) -> RequestHead {
        let mut b = http::Request::builder().uri(target);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        RequestHead {
            parts: b.body(()).unwrap().into_parts().0,
            client: "192.0.2.7:4242".parse().unwrap(),
            request_id: "r1".into(),
        }
    }

    fn line(head: &RequestHead, format: &LogFormat) -> String {
        let mut out = Vec::new();
        RequestLine {
            head,
            status: 200,
            bytes_sent: 23,
            cluster: Some("web"),
            endpoint: Some("127.0.0.1:9001"),
            attempts: 2,
            tried: &["127.0.0.1:9000", "127.0.0.1:9001"],
            upstream: Some(Duration::from_nanos(323_109)),
            total: Duration::from_nanos(1_234_567_891),
            reason: None,
        }
        .write(&Format::new(format), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_default_json_line_is_the_earlier_versions_line() {
        let h = head("/a?b=1", &[("host", b"example.com")]);
        let text = line(&h, &LogFormat::Json(DEFAULT_JSON_FIELDS.to_vec()));
        assert!(text.ends_with("}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let at: Vec<usize> = DEFAULT_JSON_FIELDS
            .iter()
            .map(|f| {
                text.find(&format!("\"{}\":", f.name()))
                    .unwrap_or_else(|| panic!("{}: {text}", f.name()))
            })
            .collect();
        assert!(at.is_sorted(), "every field, in order: {text}");
        assert_eq!(v.as_object().unwrap().len(), DEFAULT_JSON_FIELDS.len());
        assert_eq!(v["client"], "192.0.2.7:4242");
        assert_eq!(v["host"], "example.com");
        assert_eq!(v["path"], "/a");
        assert_eq!(v["reason"], serde_json::Value::Null);
        assert_eq!(v["tried"][1], "127.0.0.1:9001");
        assert!(
            text.contains(r#""upstream_ms":0.323,"total_ms":1234.568,"#),
            "{text}"
        );
        let time = v["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
    }

    #[test]
    fn hostile_values_cannot_break_a_json_line_or_a_text_one() {
        let h = head(
            "/p?q=%22",
            &[
                ("user-agent", b"a\"b\\c\td\xff\xfe \xc3\xa9"),
                ("referer", b"x\" injected=\"1"),
            ],
        );
        let all = LogFormat::Json(LogField::ALL.map(|(_, f)| f).to_vec());
        let text = line(&h, &all);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["user_agent"], "a\"b\\c\td\u{fffd}\u{fffd} é");
        assert_eq!(v["referer"], "x\" injected=\"1");
        assert_eq!(v["request"], "GET /p?q=%22 HTTP/1.1");
        assert_eq!(
            (v["query"].as_str(), v["bytes_sent"].as_u64()),
            (Some("q=%22"), Some(23))
        );

        let t = LogFormat::Text(parse_template("\"$user_agent\" \"$referer\"").unwrap());
        let text = line(&h, &t);
        assert_eq!(
            text,
            "\"a\\x22b\\x5Cc\\x09d\\xFF\\xFE \\xC3\\xA9\" \"x\\x22 injected=\\x221\"\n"
        );
    }

    #[test]
    fn the_default_text_line_is_the_combined_format_and_more() {
        let h = head("/a?b=1", &[("user-agent", b"curl/8")]);
        let t = LogFormat::Text(parse_template(DEFAULT_TEMPLATE).unwrap());
        let text = line(&h, &t);
        let (start, rest) = text.split_once(" [").unwrap();
        assert_eq!(start, "192.0.2.7 - -");
        let (time, rest) = rest.split_once("] ").unwrap();
        assert!(time.len() == 26 && time.ends_with(" +0000"), "{time}");
        assert_eq!(
            rest,
            "\"GET /a?b=1 HTTP/1.1\" 200 23 \"-\" \"curl/8\" r1 0.323 1234.568\n"
        );
    }

    #[test]
    fn times_are_spelled_in_both_formats() {
        let c = Clock::at(951_782_400 + 3661, 5);
        let mut out = Vec::new();
        c.rfc3339(&mut out);
        assert_eq!(out, b"2000-02-29T01:01:01.005Z");
        assert_eq!(&c.clf, b"29/Feb/2000:01:01:01 +0000");
        let c = Clock::at(0, 999);
        out.clear();
        c.rfc3339(&mut out);
        assert_eq!(out, b"1970-01-01T00:00:00.999Z");
        assert_eq!(
            &Clock::at(1_700_000_000, 0).clf,
            b"14/Nov/2023:22:13:20 +0000"
        );
    }

    #[test]
    fn addresses_are_spelled_as_the_standard_library_does() {
        for a in [
            "192.0.2.7:4242",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[2001:db8::1]:443",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            addr(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
            let mut out = Vec::new();
            ip_addr(&mut out, a.ip());
            assert_eq!(String::from_utf8(out).unwrap(), a.ip().to_string());
        }
    }

    #[test]
    fn durations_are_milliseconds_with_at_most_three_decimals() {
        let spell = |nanos: u64| {
            let mut out = Vec::new();
            millis(&mut out, Duration::from_nanos(nanos));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(spell(323_109), "0.323");
        assert_eq!(spell(7_000_000), "7.0");
        assert_eq!(spell(499), "0.0");
        assert_eq!(spell(1_600), "0.002");
        assert_eq!(spell(320_000), "0.32");
        assert_eq!(spell(1_234_567_891), "1234.568");
        // Every duration up to a second, by steps that hit many fractions: within half a
        // microsecond, and what serde_json's shortest printing of that decimal gives.
        for nanos in (0..1_000_000_000u64).step_by(999_983) {
            let text = spell(nanos);
            let ms: f64 = text.parse().unwrap();
            assert!(
                (ms * 1e6 - nanos as f64).abs() <= 500.0 + 1e-6,
                "{nanos}: {text}"
            );
            assert_eq!(serde_json::to_string(&ms).unwrap(), text, "{nanos}");
        }
    }
}
