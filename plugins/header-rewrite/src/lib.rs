//! A filter that adds, sets and removes request and response headers, with values built from
//! templates (`{client_ip}`, `{request_id}`, `{cluster}`, ...) parsed once in `init`.
//!
#![doc = include_str!("../README.md")]

mod template;

use serde::Deserialize;
use sluicegate_sdk::{Filter, HeaderOp, Request, RequestAction, Response};

use template::{Fields, Template};

/// The settings table: rules for each direction, applied in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    request: Vec<RawRule>,
    #[serde(default)]
    response: Vec<RawRule>,
}

/// One `[[request]]` / `[[response]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    op: String,
    name: String,
    value: Option<String>,
}

/// A checked rule.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rule {
    Set(String, Template),
    Add(String, Template),
    Remove(String),
}

impl Rule {
    /// The header change for this call, or `None` when the value has an empty placeholder.
    fn op(&self, fields: &mut Fields<'_>) -> Option<HeaderOp> {
        Some(match self {
            Rule::Set(name, t) => HeaderOp::set(name.as_str(), t.render(fields)?),
            Rule::Add(name, t) => HeaderOp::append(name.as_str(), t.render(fields)?),
            Rule::Remove(name) => HeaderOp::remove(name.as_str()),
        })
    }
}

/// The header-rewrite filter: the request rules and the response rules.
#[derive(Debug)]
pub struct HeaderRewrite {
    request: Vec<Rule>,
    response: Vec<Rule>,
}

impl HeaderRewrite {
    /// Parses and checks the settings (the TOML described in the crate docs).
    pub fn from_settings(config: &str) -> Result<Self, String> {
        let raw: RawSettings = sluicegate_sdk::settings(config)?;
        Ok(HeaderRewrite {
            request: compile(&raw.request, "request", false)?,
            response: compile(&raw.response, "response", true)?,
        })
    }
}

fn compile(rules: &[RawRule], side: &str, response: bool) -> Result<Vec<Rule>, String> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let at = format!("{side}[{i}]");
            if !is_token(&r.name) {
                return Err(format!("{at}.name: {:?} is not a header name", r.name));
            }
            let name = r.name.to_ascii_lowercase();
            let template = |value: &Option<String>| {
                let value = value
                    .as_deref()
                    .ok_or_else(|| format!("{at}.value: required for op {:?}", r.op))?;
                Template::parse(value, response).map_err(|e| format!("{at}.value: {e}"))
            };
            match r.op.as_str() {
                "set" => Ok(Rule::Set(name, template(&r.value)?)),
                "add" | "append" => Ok(Rule::Add(name, template(&r.value)?)),
                "remove" if r.value.is_some() => {
                    Err(format!("{at}.value: op \"remove\" takes no value"))
                }
                "remove" => Ok(Rule::Remove(name)),
                other => Err(format!(
                    "{at}.op: unknown op {other:?} (expected \"set\", \"add\" or \"remove\")"
                )),
            }
        })
        .collect()
}

/// An HTTP token (RFC 9110), the syntax of header names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn apply(rules: &[Rule], mut fields: Fields<'_>) -> Vec<HeaderOp> {
    rules.iter().filter_map(|r| r.op(&mut fields)).collect()
}

impl Filter for HeaderRewrite {
    fn init(config: &str) -> Result<Self, String> {
        HeaderRewrite::from_settings(config)
    }

    fn on_request(&mut self, req: &Request<'_>) -> RequestAction {
        RequestAction::Proceed(apply(&self.request, Fields::new(*req, None)))
    }

    fn on_response(&mut self, req: &Request<'_>, resp: &Response<'_>) -> Vec<HeaderOp> {
        apply(&self.response, Fields::new(*req, Some(*resp)))
    }
}

sluicegate_sdk::export_filter!(HeaderRewrite);

#[cfg(test)]
mod tests;
