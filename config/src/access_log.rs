//! `[access_log]`: where the lines go, what they say (the one vocabulary of fields, for JSON keys
//! and `$name`s in text templates alike), and how they are batched on their way to the disk.

use super::limits::ConfigSize;
use super::{Checker, ConfigDuration, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// Access log settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Whether to write one line per request (and per L4 connection).
    pub enabled: bool,
    /// File to append to; `None` for stdout.
    pub path: Option<PathBuf>,
    /// What a request's line says.
    pub format: LogFormat,
    /// Bytes each worker thread gathers before handing them to the writer (nginx's `buffer=`).
    pub buffer: usize,
    /// The longest a line waits in a worker's buffer before it is written (nginx's `flush=`).
    pub flush: Duration,
    /// Bytes handed over and not yet written (a slow disk) beyond which `when_full` applies.
    pub max_pending: usize,
    /// What happens to lines when `max_pending` is reached.
    pub when_full: WhenFull,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: true,
            path: None,
            format: LogFormat::Json(DEFAULT_JSON_FIELDS.to_vec()),
            buffer: 64 << 10,
            flush: Duration::from_secs(1),
            max_pending: 16 << 20,
            when_full: WhenFull::Drop,
        }
    }
}

/// When the disk cannot keep up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the batch and count its lines (`sluicegate_access_log_dropped_lines`): serving never
    /// waits on the log.
    Drop,
    /// The worker waits for the disk (every request on that worker waits with it): no line is
    /// lost, as nginx's unbuffered log.
    Wait,
}

/// A request line's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line with these fields, in this order.
    Json(Vec<LogField>),
    /// Text from a template: literal text and fields.
    Text(Vec<TextPart>),
}

/// A piece of a text template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextPart {
    /// Written as is.
    Literal(String),
    /// The field's value; `-` when it has none.
    Field(LogField),
}

/// What can be logged about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogField {
    /// When the request finished, RFC 3339 UTC with milliseconds.
    Time,
    /// The same in the common log format: `08/Dec/2026:02:00:00 +0000`.
    TimeLocal,
    /// The request id (`X-Request-Id`, given or made).
    RequestId,
    /// Client address and port.
    Client,
    /// Client address alone.
    ClientIp,
    /// Method.
    Method,
    /// Host asked for.
    Host,
    /// Path, without the query.
    Path,
    /// Query, without the `?`.
    Query,
    /// `GET /path?query HTTP/1.1`, as the common log format's request.
    Request,
    /// `HTTP/1.1`, `HTTP/2.0`.
    Protocol,
    /// Status sent to the client.
    Status,
    /// Response body bytes sent to the client.
    BytesSent,
    /// Cluster, when one was chosen.
    Cluster,
    /// Endpoint that answered, when one did.
    Endpoint,
    /// Upstream tries (0 when none was made).
    Attempts,
    /// Endpoints tried, in order, when more than one was (a JSON array; omitted when empty).
    Tried,
    /// Time to the upstream's response head, in milliseconds.
    UpstreamMs,
    /// Time to the end of the response body, in milliseconds.
    TotalMs,
    /// Why the proxy answered by itself.
    Reason,
    /// The `User-Agent` header.
    UserAgent,
    /// The `Referer` header.
    Referer,
}

impl LogField {
    /// Every field, by its name in the config.
    pub const ALL: [(&'static str, LogField); 22] = [
        ("time", LogField::Time),
        ("time_local", LogField::TimeLocal),
        ("request_id", LogField::RequestId),
        ("client", LogField::Client),
        ("client_ip", LogField::ClientIp),
        ("method", LogField::Method),
        ("host", LogField::Host),
        ("path", LogField::Path),
        ("query", LogField::Query),
        ("request", LogField::Request),
        ("protocol", LogField::Protocol),
        ("status", LogField::Status),
        ("bytes_sent", LogField::BytesSent),
        ("cluster", LogField::Cluster),
        ("endpoint", LogField::Endpoint),
        ("attempts", LogField::Attempts),
        ("tried", LogField::Tried),
        ("upstream_ms", LogField::UpstreamMs),
        ("total_ms", LogField::TotalMs),
        ("reason", LogField::Reason),
        ("user_agent", LogField::UserAgent),
        ("referer", LogField::Referer),
    ];

    /// The field's name: its JSON key and its `$name` in templates.
    pub fn name(self) -> &'static str {
        // `ALL` lists the fields in declaration order (a test checks it).
        LogField::ALL[self as usize].0
    }

    /// The field named `name`.
    pub fn named(name: &str) -> Option<LogField> {
        LogField::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }
}

/// The JSON fields when `fields` is not written (the line of earlier versions).
pub const DEFAULT_JSON_FIELDS: [LogField; 14] = [
    LogField::Time,
    LogField::RequestId,
    LogField::Client,
    LogField::Method,
    LogField::Host,
    LogField::Path,
    LogField::Status,
    LogField::Cluster,
    LogField::Endpoint,
    LogField::Attempts,
    LogField::Tried,
    LogField::UpstreamMs,
    LogField::TotalMs,
    LogField::Reason,
];

/// The text template when `template` is not written: the combined log format, then the request
/// id and the upstream and total times.
pub const DEFAULT_TEMPLATE: &str = "$client_ip - - [$time_local] \"$request\" $status $bytes_sent \
     \"$referer\" \"$user_agent\" $request_id $upstream_ms $total_ms";

/// `buffer` may be from 4 KB to 16 MB.
const BUFFER_RANGE: (u64, u64) = (4 << 10, 16 << 20);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub format: Option<Spanned<String>>,
    pub fields: Option<Spanned<Vec<Spanned<String>>>>,
    pub template: Option<Spanned<String>>,
    pub buffer: Option<Spanned<ConfigSize>>,
    pub flush: Option<Spanned<ConfigDuration>>,
    pub max_pending: Option<Spanned<ConfigSize>>,
    pub when_full: Option<Spanned<String>>,
}

/// Parses a template: `$name` or `${name}` is a field, `$$` a `$`, the rest literal text.
pub fn parse_template(text: &str) -> Result<Vec<TextPart>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        literal.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            literal.push('$');
            rest = r;
            continue;
        }
        let (name, after) = if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| "`${` without its `}`".to_string())?;
            (&r[..end], &r[end + 1..])
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        let field = LogField::named(name).ok_or_else(|| {
            if name.is_empty() {
                "a `$` with no field name after it (write `$$` for a `$`)".to_string()
            } else {
                format!("unknown field `${name}`; fields: {}", field_names())
            }
        })?;
        if !literal.is_empty() {
            parts.push(TextPart::Literal(std::mem::take(&mut literal)));
        }
        parts.push(TextPart::Field(field));
        rest = after;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(TextPart::Literal(literal));
    }
    Ok(parts)
}

fn field_names() -> String {
    LogField::ALL.map(|(n, _)| n).join(", ")
}

impl Checker<'_> {
    pub(super) fn access_log(
        &self,
        raw: &RawAccessLog,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<AccessLogConfig, ConfigError> {
        let d = AccessLogConfig::default();
        let text = match &raw.format {
            None => false,
            Some(f) => match f.get_ref().as_str() {
                "json" => false,
                "text" => true,
                other => {
                    return Err(self.err_at(
                        f,
                        format!("unknown format `{other}`: use \"json\" or \"text\""),
                    ));
                }
            },
        };
        let format = if text {
            if let Some(f) = &raw.fields {
                return Err(self.err_at(
                    f,
                    "`fields` chooses JSON keys; a text line is shaped by `template`".into(),
                ));
            }
            let template = raw
                .template
                .as_ref()
                .map_or(DEFAULT_TEMPLATE, |t| t.get_ref().as_str());
            let parts = parse_template(template)
                .map_err(|m| self.err_at(raw.template.as_ref().expect("the default parses"), m))?;
            LogFormat::Text(parts)
        } else {
            if let Some(t) = &raw.template {
                return Err(self.err_at(t, "`template` needs `format = \"text\"`".into()));
            }
            match &raw.fields {
                None => d.format.clone(),
                Some(list) if list.get_ref().is_empty() => {
                    return Err(self.err_at(list, "`fields` is empty: name at least one".into()));
                }
                Some(list) => {
                    let mut fields = Vec::new();
                    for name in list.get_ref() {
                        let field = LogField::named(name.get_ref()).ok_or_else(|| {
                            self.err_at(
                                name,
                                format!(
                                    "unknown field `{}`; fields: {}",
                                    name.get_ref(),
                                    field_names()
                                ),
                            )
                        })?;
                        if fields.contains(&field) {
                            return Err(self.err_at(
                                name,
                                format!("field `{}` is named twice", name.get_ref()),
                            ));
                        }
                        fields.push(field);
                    }
                    LogFormat::Json(fields)
                }
            }
        };
        let buffer = match &raw.buffer {
            Some(b) if !(BUFFER_RANGE.0..=BUFFER_RANGE.1).contains(&b.get_ref().0) => {
                return Err(self.err_at(b, "`buffer` must be between 4 KB and 16 MB".into()));
            }
            Some(b) => b.get_ref().0 as usize,
            None => d.buffer,
        };
        let max_pending = match &raw.max_pending {
            Some(m) if (m.get_ref().0 as usize) < buffer => {
                return Err(self.err_at(
                    m,
                    format!("`max_pending` must be at least `buffer` ({buffer} bytes)"),
                ));
            }
            Some(m) => m.get_ref().0 as usize,
            None => d.max_pending.max(buffer),
        };
        let when_full = match &raw.when_full {
            None => d.when_full,
            Some(w) => match w.get_ref().as_str() {
                "drop" => WhenFull::Drop,
                "wait" => WhenFull::Wait,
                other => {
                    return Err(self.err_at(
                        w,
                        format!("unknown `when_full` `{other}`: use \"drop\" or \"wait\""),
                    ));
                }
            },
        };
        Ok(AccessLogConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            path: raw
                .path
                .as_deref()
                .filter(|p| *p != "-" && !p.is_empty())
                .map(resolve),
            format,
            buffer,
            flush: self.positive(&raw.flush, "flush", d.flush)?,
            max_pending,
            when_full,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use std::path::Path;

    fn parse(section: &str) -> Result<AccessLogConfig, ConfigError> {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[[routes]]\ncluster = \"c\"\n\
             [[clusters]]\nname = \"c\"\n[[clusters.endpoints]]\naddress = \"127.0.0.1:1\"\n\
             [access_log]\n{section}\n"
        );
        Config::parse(&text, "t.toml", Path::new("/etc/sg")).map(|c| c.access_log)
    }

    fn invalid(section: &str) -> (usize, String) {
        match parse(section) {
            Err(ConfigError::Invalid { at, message, .. }) => (at.line, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_json_line_batched_by_64_kb_or_a_second() {
        let c = parse("").unwrap();
        assert_eq!(c, AccessLogConfig::default());
        assert_eq!(
            c.format,
            LogFormat::Json(DEFAULT_JSON_FIELDS.to_vec()),
            "the line of earlier versions"
        );
        let c = parse(
            "path = \"a.log\"\nbuffer = \"8KB\"\nflush = \"250ms\"\nmax_pending = \"1MB\"\n\
             when_full = \"wait\"\nfields = [\"status\", \"time\"]",
        )
        .unwrap();
        assert_eq!(c.path, Some(PathBuf::from("/etc/sg/a.log")));
        assert_eq!(
            (c.buffer, c.flush, c.max_pending, c.when_full),
            (8192, Duration::from_millis(250), 1 << 20, WhenFull::Wait)
        );
        assert_eq!(
            c.format,
            LogFormat::Json(vec![LogField::Status, LogField::Time])
        );
    }

    #[test]
    fn templates_read_fields_escapes_and_literals() {
        assert_eq!(
            parse_template("$client_ip [${time_local}]x $$5 $status").unwrap(),
            vec![
                TextPart::Field(LogField::ClientIp),
                TextPart::Literal(" [".into()),
                TextPart::Field(LogField::TimeLocal),
                TextPart::Literal("]x $5 ".into()),
                TextPart::Field(LogField::Status),
            ]
        );
        let c = parse("format = \"text\"").unwrap();
        assert_eq!(
            c.format,
            LogFormat::Text(parse_template(DEFAULT_TEMPLATE).unwrap())
        );
        for (i, (name, field)) in LogField::ALL.into_iter().enumerate() {
            assert_eq!(field as usize, i, "ALL is in declaration order");
            assert_eq!(field.name(), name);
            assert_eq!(LogField::named(name), Some(field));
        }
    }

    #[test]
    fn what_cannot_work_is_refused_at_its_line() {
        for (section, line, words) in [
            ("format = \"xml\"", 10, "unknown format `xml`"),
            (
                "fields = [\"status\", \"bogus\"]",
                10,
                "unknown field `bogus`",
            ),
            ("fields = [\"status\", \"status\"]", 10, "named twice"),
            ("fields = []", 10, "`fields` is empty"),
            ("format = \"text\"\nfields = [\"status\"]", 11, "`template`"),
            ("template = \"$status\"", 10, "needs `format = \"text\"`"),
            (
                "format = \"text\"\ntemplate = \"$nope\"",
                11,
                "unknown field `$nope`",
            ),
            ("format = \"text\"\ntemplate = \"a $ b\"", 11, "`$$`"),
            (
                "format = \"text\"\ntemplate = \"${status\"",
                11,
                "without its `}`",
            ),
            ("buffer = \"1KB\"", 10, "between 4 KB and 16 MB"),
            (
                "buffer = \"64KB\"\nmax_pending = \"16KB\"",
                11,
                "at least `buffer`",
            ),
            ("flush = \"0s\"", 10, "longer than 0"),
            ("when_full = \"block\"", 10, "\"drop\" or \"wait\""),
        ] {
            let (at, message) = invalid(section);
            assert_eq!(at, line, "{section}: {message}");
            assert!(message.contains(words), "{section}: {message}");
        }
    }
}
