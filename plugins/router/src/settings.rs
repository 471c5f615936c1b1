//! The router's settings as written in TOML, and their checking into [`Rule`]s: every mistake
//! is refused in `init` with the rule index and field it concerns (`rules[2].path_regex: ...`).

use std::collections::BTreeMap;
use std::fmt;

use regex_lite::Regex;
use serde::Deserialize;
use sluicegate_sdk::LocalResponse;

use crate::rules::{
    Action, Conditions, HostMatch, Pair, PathMatch, Redirect, Rule, Split, SplitKey,
};

/// The settings table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    /// Where requests no rule matches go; without it they are answered 404.
    default_cluster: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

/// One `[[rules]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    host: Option<String>,
    path: Option<String>,
    path_prefix: Option<String>,
    path_regex: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    headers: Vec<RawPair>,
    #[serde(default)]
    cookies: Vec<RawPair>,
    cluster: Option<String>,
    split: Option<Vec<RawSplit>>,
    split_on: Option<String>,
    redirect: Option<RawRedirect>,
    respond: Option<RawRespond>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    name: String,
    equals: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplit {
    cluster: String,
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedirect {
    location: String,
    #[serde(default = "default_redirect_status")]
    status: u16,
    #[serde(default)]
    keep_path: bool,
    #[serde(default)]
    keep_query: bool,
}

fn default_redirect_status() -> u16 {
    302
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRespond {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

/// A setting refused at `init`: where it is (`rules[2].path_regex`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingsError {
    /// The field, as a path into the settings (`default_cluster`, `rules[0].split[1].weight`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for SettingsError {}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError {
        field: field.into(),
        message: message.into(),
    }
}

/// The checked settings: the rules in order and the default cluster.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) rules: Vec<Rule>,
    /// Its index in the proxy's cluster list.
    pub(crate) default_cluster: Option<u32>,
}

impl RawSettings {
    /// Checks every rule against the proxy's `clusters` and builds the matchers.
    pub(crate) fn compile(self, clusters: &[String]) -> Result<Compiled, SettingsError> {
        let default_cluster = self
            .default_cluster
            .map(|c| cluster_index("default_cluster", &c, clusters))
            .transpose()?;
        let rules = self
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.compile(&format!("rules[{i}]"), clusters))
            .collect::<Result<_, _>>()?;
        Ok(Compiled {
            rules,
            default_cluster,
        })
    }
}

impl RawRule {
    fn compile(self, at: &str, clusters: &[String]) -> Result<Rule, SettingsError> {
        let host = self
            .host
            .map(|h| compile_host(&format!("{at}.host"), &h))
            .transpose()?;
        let paths = [
            self.path.map(|p| ("path", p)),
            self.path_prefix.map(|p| ("path_prefix", p)),
            self.path_regex.map(|p| ("path_regex", p)),
        ];
        let mut paths = paths.into_iter().flatten();
        let path = match (paths.next(), paths.next()) {
            (Some((a, _)), Some((b, _))) => {
                return Err(refuse(
                    format!("{at}.{b}"),
                    format!(
                        "a rule has at most one of path, path_prefix and path_regex (it also has {a})"
                    ),
                ));
            }
            (None, _) => None,
            (Some((field, p)), None) => Some(compile_path(&format!("{at}.{field}"), field, p)?),
        };
        let methods = self
            .methods
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                if is_token(&m) {
                    Ok(m.to_ascii_uppercase())
                } else {
                    Err(refuse(
                        format!("{at}.methods[{i}]"),
                        format!("{m:?} is not a method name"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        let headers = compile_pairs(&format!("{at}.headers"), self.headers)?;
        let cookies = compile_pairs(&format!("{at}.cookies"), self.cookies)?;
        let action = compile_action(
            at,
            clusters,
            self.cluster,
            self.split,
            self.split_on,
            self.redirect,
            self.respond,
        )?;
        Ok(Rule {
            conditions: Conditions {
                host,
                path,
                methods,
                headers,
                cookies,
            },
            action,
        })
    }
}

fn compile_host(at: &str, host: &str) -> Result<HostMatch, SettingsError> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err(refuse(at, "empty host"));
    }
    if let Some(rest) = host.strip_prefix("*.") {
        if rest.is_empty() || rest.contains('*') {
            return Err(refuse(
                at,
                format!("{host:?}: a wildcard host is `*.` then a domain"),
            ));
        }
        return Ok(HostMatch::Suffix(format!(".{rest}")));
    }
    if host.contains('*') {
        return Err(refuse(
            at,
            format!("{host:?}: `*` is only allowed as the whole first label (`*.example.com`)"),
        ));
    }
    Ok(HostMatch::Exact(host))
}

fn compile_path(at: &str, field: &str, p: String) -> Result<PathMatch, SettingsError> {
    match field {
        "path_regex" => Regex::new(&p)
            .map(PathMatch::Regex)
            .map_err(|e| refuse(at, format!("invalid regex: {e}"))),
        _ if !p.starts_with('/') => Err(refuse(at, format!("{p:?} does not start with `/`"))),
        "path" => Ok(PathMatch::Exact(p)),
        _ => Ok(PathMatch::Prefix(p)),
    }
}

fn compile_pairs(at: &str, pairs: Vec<RawPair>) -> Result<Vec<Pair>, SettingsError> {
    pairs
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if p.name.is_empty() || !is_token(&p.name) {
                return Err(refuse(
                    format!("{at}[{i}].name"),
                    format!("{:?} is not a valid name", p.name),
                ));
            }
            Ok(Pair {
                name: p.name,
                equals: p.equals,
            })
        })
        .collect()
}

fn compile_action(
    at: &str,
    clusters: &[String],
    cluster: Option<String>,
    split: Option<Vec<RawSplit>>,
    split_on: Option<String>,
    redirect: Option<RawRedirect>,
    respond: Option<RawRespond>,
) -> Result<Action, SettingsError> {
    let given: Vec<&str> = [
        cluster.as_ref().map(|_| "cluster"),
        split.as_ref().map(|_| "split"),
        redirect.as_ref().map(|_| "redirect"),
        respond.as_ref().map(|_| "respond"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        return Err(refuse(
            at,
            format!(
                "a rule needs exactly one of cluster, split, redirect and respond (it has {})",
                if given.is_empty() {
                    "none".to_owned()
                } else {
                    given.join(", ")
                }
            ),
        ));
    }
    if split_on.is_some() && split.is_none() {
        return Err(refuse(
            format!("{at}.split_on"),
            "only meaningful with split",
        ));
    }
    if let Some(c) = cluster {
        return cluster_index(&format!("{at}.cluster"), &c, clusters).map(Action::Cluster);
    }
    if let Some(s) = split {
        return compile_split(at, clusters, s, split_on.as_deref()).map(Action::Split);
    }
    if let Some(r) = redirect {
        return compile_redirect(&format!("{at}.redirect"), r).map(Action::Redirect);
    }
    let r = respond.expect("exactly one action was given");
    compile_respond(&format!("{at}.respond"), r).map(Action::Respond)
}

fn compile_split(
    at: &str,
    clusters: &[String],
    split: Vec<RawSplit>,
    on: Option<&str>,
) -> Result<Split, SettingsError> {
    let on = match on {
        None | Some("random") => SplitKey::Random,
        Some("request-id") => SplitKey::RequestId,
        Some(other) => match other.split_once(':') {
            Some(("header", name)) if is_token(name) => SplitKey::Header(name.to_owned()),
            Some(("cookie", name)) if is_token(name) => SplitKey::Cookie(name.to_owned()),
            _ => {
                return Err(refuse(
                    format!("{at}.split_on"),
                    format!(
                        "{other:?}: expected \"random\", \"request-id\", \"header:NAME\" or \"cookie:NAME\""
                    ),
                ));
            }
        },
    };
    if split.is_empty() {
        return Err(refuse(format!("{at}.split"), "needs at least one cluster"));
    }
    let mut total = 0u64;
    let mut targets = Vec::with_capacity(split.len());
    for (i, s) in split.into_iter().enumerate() {
        let cluster = cluster_index(&format!("{at}.split[{i}].cluster"), &s.cluster, clusters)?;
        if s.weight > 0 {
            total += u64::from(s.weight);
            targets.push((cluster, total));
        }
    }
    if total == 0 {
        return Err(refuse(
            format!("{at}.split"),
            "every weight is 0: at least one must be positive",
        ));
    }
    Ok(Split { targets, total, on })
}

fn compile_redirect(at: &str, r: RawRedirect) -> Result<Redirect, SettingsError> {
    if !matches!(r.status, 301 | 302 | 303 | 307 | 308) {
        return Err(refuse(
            format!("{at}.status"),
            format!(
                "{} is not a redirect status (301, 302, 303, 307 or 308)",
                r.status
            ),
        ));
    }
    if r.location.is_empty() || !is_header_value(&r.location) {
        return Err(refuse(
            format!("{at}.location"),
            "must be a non-empty header value",
        ));
    }
    Ok(Redirect {
        status: r.status,
        location: r.location,
        keep_path: r.keep_path,
        keep_query: r.keep_query,
    })
}

fn compile_respond(at: &str, r: RawRespond) -> Result<LocalResponse, SettingsError> {
    if !(200..=599).contains(&r.status) {
        return Err(refuse(
            format!("{at}.status"),
            format!("{} is not a status in 200..=599", r.status),
        ));
    }
    let mut resp = LocalResponse::new(r.status);
    for (name, value) in r.headers {
        if !is_token(&name) || name.is_empty() {
            return Err(refuse(
                format!("{at}.headers"),
                format!("{name:?} is not a header name"),
            ));
        }
        if !is_header_value(&value) {
            return Err(refuse(
                format!("{at}.headers.{name}"),
                "not a valid header value",
            ));
        }
        resp = resp.header(name.to_ascii_lowercase(), value);
    }
    if !r.body.is_empty() && !resp.headers.iter().any(|(n, _)| n == "content-type") {
        resp = resp.header("content-type", "text/plain; charset=utf-8");
    }
    Ok(resp.body(r.body.into_bytes()))
}

/// The index of cluster `name` in the proxy's list, which is what the router answers.
fn cluster_index(at: &str, name: &str, clusters: &[String]) -> Result<u32, SettingsError> {
    if name.trim().is_empty() {
        return Err(refuse(at, "empty cluster name"));
    }
    match clusters.iter().position(|c| c == name) {
        Some(i) => Ok(i as u32),
        None => Err(refuse(
            at,
            format!(
                "no cluster named `{name}` in the proxy's config (its clusters: {})",
                if clusters.is_empty() {
                    "none".to_owned()
                } else {
                    clusters.join(", ")
                }
            ),
        )),
    }
}

/// An HTTP token (RFC 9110): method and header names.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, spaces and tabs: nothing that could split a header.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}
