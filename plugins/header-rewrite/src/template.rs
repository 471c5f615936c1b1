//! Header value templates: literal text with `{placeholder}`s, parsed once in `init` and rendered
//! per request from fields read lazily (each at most once per call, only if a template uses it).

use std::fmt;

use sluicegate_sdk::{Request, Response};

/// A value a template can insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Var {
    ClientIp,
    RequestId,
    Host,
    Path,
    Query,
    Method,
    Cluster,
    Endpoint,
    Status,
}

impl Var {
    const ALL: [Var; 9] = [
        Var::ClientIp,
        Var::RequestId,
        Var::Host,
        Var::Path,
        Var::Query,
        Var::Method,
        Var::Cluster,
        Var::Endpoint,
        Var::Status,
    ];

    fn name(self) -> &'static str {
        match self {
            Var::ClientIp => "client_ip",
            Var::RequestId => "request_id",
            Var::Host => "host",
            Var::Path => "path",
            Var::Query => "query",
            Var::Method => "method",
            Var::Cluster => "cluster",
            Var::Endpoint => "endpoint",
            Var::Status => "status",
        }
    }

    /// Whether the value comes from the response, so only response rules may use it.
    fn needs_response(self) -> bool {
        matches!(self, Var::Cluster | Var::Endpoint | Var::Status)
    }
}

/// One piece of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// Why a template was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TemplateError {
    Unknown(String),
    ResponseOnly(Var),
    Unclosed,
    StrayClose,
    BadChar,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::Unknown(name) => {
                let known: Vec<String> = Var::ALL
                    .iter()
                    .map(|v| format!("{{{}}}", v.name()))
                    .collect();
                write!(
                    f,
                    "unknown placeholder {{{name}}} (known: {})",
                    known.join(", ")
                )
            }
            TemplateError::ResponseOnly(v) => {
                write!(f, "{{{}}} is only available in response rules", v.name())
            }
            TemplateError::Unclosed => {
                f.write_str("`{` without a closing `}` (write `{{` for a literal `{`)")
            }
            TemplateError::StrayClose => {
                f.write_str("`}` without an opening `{` (write `}}` for a literal `}`)")
            }
            TemplateError::BadChar => {
                f.write_str("control characters (CR, LF, ...) are not allowed in header values")
            }
        }
    }
}

impl Template {
    /// Parses `{name}` placeholders; `{{` and `}}` are literal braces. `response` says whether the
    /// template belongs to a response rule (which may use `{cluster}`, `{endpoint}`, `{status}`).
    pub(crate) fn parse(text: &str, response: bool) -> Result<Template, TemplateError> {
        if text.bytes().any(|b| b != b'\t' && (b < b' ' || b == 0x7f)) {
            return Err(TemplateError::BadChar);
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            literal.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(TemplateError::StrayClose);
            } else {
                let end = tail.find('}').ok_or(TemplateError::Unclosed)?;
                let name = &tail[1..end];
                let var = Var::ALL
                    .into_iter()
                    .find(|v| v.name() == name)
                    .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
                if var.needs_response() && !response {
                    return Err(TemplateError::ResponseOnly(var));
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Var(var));
                rest = &tail[end + 1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template { pieces })
    }

    /// The value for this request (and response), or `None` when a placeholder has no value
    /// (no host, no query, a local answer with no cluster or endpoint).
    pub(crate) fn render(&self, fields: &mut Fields<'_>) -> Option<String> {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(fields.get(*v)?),
            }
        }
        Some(out)
    }
}

/// The fields of one call, each read from the proxy on first use and kept for later rules.
pub(crate) struct Fields<'a> {
    req: Request<'a>,
    resp: Option<Response<'a>>,
    cache: [Option<Option<String>>; Var::ALL.len()],
}

impl<'a> Fields<'a> {
    pub(crate) fn new(req: Request<'a>, resp: Option<Response<'a>>) -> Self {
        Fields {
            req,
            resp,
            cache: Default::default(),
        }
    }

    fn get(&mut self, var: Var) -> Option<&str> {
        let slot = Var::ALL
            .iter()
            .position(|v| *v == var)
            .expect("every Var is in ALL");
        let (req, resp) = (self.req, self.resp);
        self.cache[slot]
            .get_or_insert_with(|| match var {
                Var::ClientIp => Some(req.client_ip().to_string()),
                Var::RequestId => Some(req.request_id()),
                Var::Host => req.host(),
                Var::Path => Some(req.path()),
                Var::Query => req.query(),
                Var::Method => Some(req.method()),
                Var::Cluster => resp?.cluster(),
                Var::Endpoint => resp?.endpoint().map(|e| e.to_string()),
                Var::Status => resp.map(|r| r.status().to_string()),
            })
            .as_deref()
    }
}
