//! The `[plugins]` section (where plugins come from, their CPU, memory and time budgets, the
//! circuit breaker, rollback) and what a faulting router or filter leaves in its place.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::duration::ConfigDuration;
use super::raw::RawRoute;
use super::{Checker, ConfigError, PluginUse, Route};

/// `[plugins] call_deadline` when the file does not set it: wall-clock time, only a backstop now
/// that fuel bounds a call's own work (a deadline counts any time the thread is descheduled, so a
/// tight one flags healthy calls on a loaded machine).
pub const DEFAULT_CALL_DEADLINE: Duration = Duration::from_millis(250);

/// `[plugins] memory_limit_mb` when the file does not set it.
pub const DEFAULT_MEMORY_LIMIT_MB: u32 = 64;

/// `[plugins] max_file_size` when the file does not set it: the default plugins are 100–400 KB.
pub const DEFAULT_MAX_PLUGIN_FILE_SIZE: u64 = 64 << 20;

/// `[plugins] fuel_per_call` when the file does not set it: every default plugin at 1,000
/// endpoints uses under 5% of it.
pub const DEFAULT_FUEL_PER_CALL: u64 = 10_000_000;

/// `[plugins] init_fuel` when the file does not set it.
pub const DEFAULT_INIT_FUEL: u64 = 10_000_000_000;

/// The smallest `fuel_per_call` accepted: below it even a trivial decision runs out.
const MIN_FUEL: u64 = 10_000;

/// Plugin runtime settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginsConfig {
    /// The watched plugin directory, if any.
    pub dir: Option<PathBuf>,
    /// Where compiled plugins are cached.
    pub cache_dir: Option<PathBuf>,
    /// The CPU budget of one decision call, in fuel (about one unit per Wasm instruction).
    pub fuel_per_call: u64,
    /// The CPU budget of `init` and `pool-changed`, in fuel.
    pub init_fuel: u64,
    /// Wall-clock deadline of one plugin call (a backstop: fuel bounds the plugin's own work).
    pub call_deadline: Duration,
    /// Memory limit of one plugin instance, in MiB.
    pub memory_limit_mb: u32,
    /// A plugin file larger than this is refused before it is read.
    pub max_file_size: u64,
    /// When a plugin use stops being called, and how it is tried again.
    pub breaker: BreakerConfig,
    /// A version whose breaker opens within this time of its hot reload is rolled back to the
    /// version before it; zero for never.
    pub rollback_window: Duration,
}

/// `[plugins.breaker]`: the circuit breaker of every plugin use.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive faults that open it.
    pub faults: u32,
    /// ...or a share of faulty calls above this over `window`.
    pub fault_ratio: f64,
    /// The window of the fault ratio.
    pub window: Duration,
    /// Calls a window needs before its ratio counts.
    pub min_calls: u64,
    /// Wait before the first probe call once open (doubling after each failed probe).
    pub backoff: Duration,
    /// Longest wait between probe calls.
    pub backoff_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            faults: 5,
            fault_ratio: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A request filter and what stands in for it when it faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// The plugin and its settings.
    pub plugin: PluginUse,
    /// When it faults (or its breaker is open).
    pub on_fault: FilterFault,
}

/// What a faulting filter means for the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterFault {
    /// The request goes on unchanged (`on_fault = "skip"`, the default).
    Skip,
    /// The request is answered 503 and never forwarded (`on_fault = "reject"`): an auth filter
    /// must fail closed.
    Reject,
}

/// What serves when the router plugin faults (or its breaker is open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouterFault {
    /// Answer with this status (`on_fault = "respond"`, the default, with `fault_status`, 502).
    Respond(u16),
    /// The `[[routes]]` table (`on_fault = "routes"`).
    Routes(Vec<Route>),
    /// Another router plugin (`on_fault = "router"`, with `fallback_router`).
    Router(PluginUse),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlugins {
    pub dir: Option<String>,
    pub cache_dir: Option<String>,
    pub fuel_per_call: Option<Spanned<u64>>,
    pub init_fuel: Option<Spanned<u64>>,
    pub call_deadline: Option<ConfigDuration>,
    pub memory_limit_mb: Option<u32>,
    pub max_file_size: Option<Spanned<super::ConfigSize>>,
    #[serde(default)]
    pub breaker: RawBreaker,
    pub rollback_window: Option<ConfigDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    pub faults: Option<Spanned<u32>>,
    pub fault_ratio: Option<Spanned<f64>>,
    pub window: Option<ConfigDuration>,
    pub min_calls: Option<u64>,
    pub backoff: Option<Spanned<ConfigDuration>>,
    pub backoff_max: Option<Spanned<ConfigDuration>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFilter {
    pub plugin: Spanned<String>,
    pub settings: Option<Spanned<toml::Table>>,
    pub on_fault: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouter {
    pub plugin: Spanned<String>,
    pub settings: Option<Spanned<toml::Table>>,
    pub on_fault: Option<Spanned<String>>,
    pub fault_status: Option<Spanned<u16>>,
    pub fallback_router: Option<Spanned<String>>,
    pub fallback_settings: Option<Spanned<toml::Table>>,
}

impl Checker<'_> {
    /// The `[plugins]` section; `resolve` makes its paths absolute.
    pub(super) fn plugins(
        &self,
        raw: &RawPlugins,
        resolve: impl Fn(&str) -> PathBuf,
    ) -> Result<PluginsConfig, ConfigError> {
        let fuel = |f: &Option<Spanned<u64>>, default| match f {
            Some(f) if *f.get_ref() < MIN_FUEL => Err(self.err_at(
                f,
                format!("fuel must be at least {MIN_FUEL} (the default is {default})"),
            )),
            Some(f) => Ok(*f.get_ref()),
            None => Ok(default),
        };
        Ok(PluginsConfig {
            dir: raw.dir.as_deref().map(&resolve),
            cache_dir: raw.cache_dir.as_deref().map(&resolve),
            fuel_per_call: fuel(&raw.fuel_per_call, DEFAULT_FUEL_PER_CALL)?,
            init_fuel: fuel(&raw.init_fuel, DEFAULT_INIT_FUEL)?,
            call_deadline: raw.call_deadline.map_or(DEFAULT_CALL_DEADLINE, |d| d.0),
            memory_limit_mb: raw.memory_limit_mb.unwrap_or(DEFAULT_MEMORY_LIMIT_MB),
            max_file_size: match &raw.max_file_size {
                Some(s) if s.get_ref().0 < 1024 => {
                    return Err(self.err_at(s, "`max_file_size` must be at least 1KB".into()));
                }
                Some(s) => s.get_ref().0,
                None => DEFAULT_MAX_PLUGIN_FILE_SIZE,
            },
            breaker: self.breaker(&raw.breaker)?,
            rollback_window: raw
                .rollback_window
                .map_or(Duration::from_secs(300), |d| d.0),
        })
    }

    fn breaker(&self, raw: &RawBreaker) -> Result<BreakerConfig, ConfigError> {
        let d = BreakerConfig::default();
        let faults = match &raw.faults {
            Some(f) if *f.get_ref() == 0 => {
                return Err(self.err_at(f, "`faults` must be at least 1".into()));
            }
            Some(f) => *f.get_ref(),
            None => d.faults,
        };
        let fault_ratio = match &raw.fault_ratio {
            Some(r) if !(*r.get_ref() > 0.0 && *r.get_ref() <= 1.0) => {
                return Err(self.err_at(
                    r,
                    "`fault_ratio` is a share of calls: more than 0, at most 1".into(),
                ));
            }
            Some(r) => *r.get_ref(),
            None => d.fault_ratio,
        };
        let backoff = match &raw.backoff {
            Some(b) if b.get_ref().0.is_zero() => {
                return Err(self.err_at(b, "`backoff` must be longer than 0".into()));
            }
            Some(b) => b.get_ref().0,
            None => d.backoff,
        };
        let backoff_max = match &raw.backoff_max {
            Some(b) if b.get_ref().0 < backoff => {
                return Err(self.err_at(
                    b,
                    format!("`backoff_max` must be at least `backoff` ({backoff:?})"),
                ));
            }
            Some(b) => b.get_ref().0,
            None => d.backoff_max.max(backoff),
        };
        Ok(BreakerConfig {
            faults,
            fault_ratio,
            window: raw.window.map_or(d.window, |w| w.0),
            min_calls: raw.min_calls.unwrap_or(d.min_calls),
            backoff,
            backoff_max,
        })
    }

    /// A `[[filters]]` entry.
    pub(super) fn filter(&self, raw: &RawFilter) -> Result<FilterConfig, ConfigError> {
        let on_fault = match raw.on_fault.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "skip")) => FilterFault::Skip,
            Some((_, "reject")) => FilterFault::Reject,
            Some((s, other)) => {
                return Err(self.err_at(
                    s,
                    format!("unknown on_fault `{other}`: use \"skip\" or \"reject\""),
                ));
            }
        };
        Ok(FilterConfig {
            plugin: self.plugin_use(&raw.plugin, raw.settings.as_ref())?,
            on_fault,
        })
    }

    /// The `[router]` plugin and its fallback; `routes` is the `[[routes]]` table, which only
    /// `on_fault = "routes"` allows beside a router plugin, and `route` checks one of its entries.
    pub(super) fn router(
        &self,
        raw: &RawRouter,
        routes: &[RawRoute],
        route: impl Fn(&RawRoute) -> Result<Route, ConfigError>,
    ) -> Result<(PluginUse, RouterFault), ConfigError> {
        let router = self.plugin_use(&raw.plugin, raw.settings.as_ref())?;
        let mode = raw.on_fault.as_ref().map(|s| (s, s.get_ref().as_str()));
        if let Some(status) = &raw.fault_status
            && !matches!(mode, None | Some((_, "respond")))
        {
            return Err(self.err_at(
                status,
                "`fault_status` goes with on_fault = \"respond\"".into(),
            ));
        }
        let named = raw.fallback_router.as_ref().map(|n| n.span());
        let given = raw.fallback_settings.as_ref().map(|s| s.span());
        if let Some(span) = named.or(given)
            && !matches!(mode, Some((_, "router")))
        {
            return Err(self.error(
                span,
                "`fallback_router` and `fallback_settings` go with on_fault = \"router\"".into(),
            ));
        }
        if !routes.is_empty() && !matches!(mode, Some((_, "routes"))) {
            return Err(self.err_at(
                &raw.plugin,
                "use either a router plugin or [[routes]], not both (or on_fault = \"routes\" to make [[routes]] the router's fallback)"
                    .into(),
            ));
        }
        let fault = match mode {
            None | Some((_, "respond")) => {
                let status = match &raw.fault_status {
                    Some(s) if !(400..=599).contains(s.get_ref()) => {
                        return Err(self
                            .err_at(s, "`fault_status` must be an error status (400-599)".into()));
                    }
                    Some(s) => *s.get_ref(),
                    None => 502,
                };
                RouterFault::Respond(status)
            }
            Some((s, "routes")) => {
                if routes.is_empty() {
                    return Err(self.err_at(
                        s,
                        "on_fault = \"routes\" needs a [[routes]] table to fall back on".into(),
                    ));
                }
                RouterFault::Routes(routes.iter().map(route).collect::<Result<_, _>>()?)
            }
            Some((s, "router")) => {
                let Some(name) = &raw.fallback_router else {
                    return Err(self.err_at(
                        s,
                        "on_fault = \"router\" needs `fallback_router`, the router plugin to fall back on"
                            .into(),
                    ));
                };
                RouterFault::Router(self.plugin_use(name, raw.fallback_settings.as_ref())?)
            }
            Some((s, other)) => {
                return Err(self.err_at(
                    s,
                    format!(
                        "unknown on_fault `{other}`: use \"respond\", \"routes\" or \"router\""
                    ),
                ));
            }
        };
        Ok((router, fault))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Routing};

    fn parse(text: &str) -> Config {
        Config::parse(text, "t.toml", std::path::Path::new("/")).unwrap()
    }

    #[test]
    fn plugin_budgets_breaker_and_rollback_have_defaults_and_can_be_set() {
        let c = parse("");
        assert_eq!(c.plugins.fuel_per_call, DEFAULT_FUEL_PER_CALL);
        assert_eq!(c.plugins.breaker, BreakerConfig::default());
        assert_eq!(c.plugins.rollback_window, Duration::from_secs(300));
        let c = parse(
            "[plugins]\nfuel_per_call = 50000\ninit_fuel = 90000\nrollback_window = \"0s\"\n\
             [plugins.breaker]\nfaults = 2\nfault_ratio = 0.25\nwindow = \"5s\"\nmin_calls = 4\n\
             backoff = \"200ms\"\nbackoff_max = \"3s\"\n",
        );
        assert_eq!(
            (c.plugins.fuel_per_call, c.plugins.init_fuel),
            (50_000, 90_000)
        );
        assert!(c.plugins.rollback_window.is_zero());
        assert_eq!(
            c.plugins.breaker,
            BreakerConfig {
                faults: 2,
                fault_ratio: 0.25,
                window: Duration::from_secs(5),
                min_calls: 4,
                backoff: Duration::from_millis(200),
                backoff_max: Duration::from_secs(3),
            }
        );
        // A backoff longer than the default maximum raises the maximum with it.
        let c = parse("[plugins.breaker]\nbackoff = \"90s\"\n");
        assert_eq!(c.plugins.breaker.backoff_max, Duration::from_secs(90));
    }

    #[test]
    fn filters_skip_or_reject_on_fault() {
        let c = parse(
            "[[filters]]\nplugin = \"a\"\n[[filters]]\nplugin = \"b\"\non_fault = \"reject\"\n\
             [[filters]]\nplugin = \"c\"\non_fault = \"skip\"\n",
        );
        let faults: Vec<FilterFault> = c.filters.iter().map(|f| f.on_fault).collect();
        assert_eq!(
            faults,
            [FilterFault::Skip, FilterFault::Reject, FilterFault::Skip]
        );
    }

    #[test]
    fn a_router_falls_back_on_a_status_the_routes_or_another_router() {
        let clusters = "[[clusters]]\nname = \"web\"\n";
        let fault = |text: &str| match parse(&format!("{text}{clusters}")).routing {
            Routing::Plugin { on_fault, .. } => *on_fault,
            Routing::Table(_) => panic!("a router plugin"),
        };
        assert_eq!(
            fault("[router]\nplugin = \"r\"\n"),
            RouterFault::Respond(502)
        );
        assert_eq!(
            fault("[router]\nplugin = \"r\"\nfault_status = 503\n"),
            RouterFault::Respond(503)
        );
        let RouterFault::Routes(routes) = fault(
            "[router]\nplugin = \"r\"\non_fault = \"routes\"\n[[routes]]\ncluster = \"web\"\n",
        ) else {
            panic!("routes")
        };
        assert_eq!(routes[0].cluster, "web");
        let RouterFault::Router(other) = fault(
            "[router]\nplugin = \"r\"\non_fault = \"router\"\nfallback_router = \"router\"\n\
             fallback_settings = { x = 1 }\n",
        ) else {
            panic!("router")
        };
        assert_eq!(
            (other.plugin.as_str(), other.settings.trim()),
            ("router", "x = 1")
        );
        for (text, needle) in [
            ("on_fault = \"router\"\n", "needs `fallback_router`"),
            ("fallback_router = \"x\"\n", "go with on_fault = \"router\""),
            ("on_fault = \"routes\"\nfault_status = 503\n", "goes with"),
            ("fault_status = 200\n", "400-599"),
            ("on_fault = \"maybe\"\n", "unknown on_fault"),
        ] {
            let e = Config::parse(
                &format!("[router]\nplugin = \"r\"\n{text}{clusters}"),
                "t.toml",
                std::path::Path::new("/"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
