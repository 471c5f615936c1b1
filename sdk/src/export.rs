//! The export macros: one line in a plugin crate turns a type implementing a plugin trait into
//! the matching component export. In the Wasm build they expand to the generated bindings'
//! export glue, the custom section describing that world and the thread-local holding the
//! instance; natively they only check that the type implements the trait, so the same crate
//! unit-tests with plain `cargo test`.

/// Exports a [`Balancer`](crate::Balancer) implementation as the plugin's `balance` interface.
///
/// ```
/// use sluicegate_sdk::{Balancer, Endpoint, EndpointId, PickContext, Request};
///
/// struct First(Option<EndpointId>);
///
/// impl Balancer for First {
///     fn init(_config: &str) -> Result<Self, String> { Ok(First(None)) }
///     fn pool_changed(&mut self, endpoints: &[Endpoint]) { self.0 = endpoints.first().map(|e| e.id) }
///     fn pick(&mut self, _req: &Request, _ctx: &PickContext) -> Option<EndpointId> { self.0 }
/// }
///
/// sluicegate_sdk::export_balancer!(First);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_balancer {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            $crate::__export_slot!(__SluicegateSlot, $ty);
            type __SluicegateBalancer = $crate::glue::BalancerExport<$ty, __SluicegateSlot>;
            $crate::wit::balancer::export!(__SluicegateBalancer with_types_in $crate::wit::balancer);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __sluicegate_check<T: $crate::Balancer + 'static>() {}
            let _ = __sluicegate_check::<$ty>;
        };
    };
}

/// Exports a [`Router`](crate::Router) implementation as the plugin's `route` interface.
///
/// ```
/// use sluicegate_sdk::{Request, RouteDecision, Router};
///
/// struct ByHost;
///
/// impl Router for ByHost {
///     fn init(_config: &str, _clusters: &[String]) -> Result<Self, String> { Ok(ByHost) }
///     fn route(&mut self, req: &Request) -> RouteDecision {
///         match req.host().as_deref() {
///             Some("api.example.com") => RouteDecision::cluster("api"),
///             _ => RouteDecision::cluster("web"),
///         }
///     }
/// }
///
/// sluicegate_sdk::export_router!(ByHost);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            $crate::__export_slot!(__SluicegateSlot, $crate::glue::Routing<$ty>);
            type __SluicegateRouter = $crate::glue::RouterExport<$ty, __SluicegateSlot>;
    $crate::wit::router::export!(__SluicegateRouter with_types_in $crate::wit::router);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __sluicegate_check<T: $crate::Router + 'static>() {}
            let _ = __sluicegate_check::<$ty>;
        };
    };
}

/// Exports a [`Filter`](crate::Filter) implementation as the plugin's `filter` interface.
///
/// ```
/// use sluicegate_sdk::{Filter, HeaderOp, Request, Response};
///
/// struct ServedBy;
///
/// impl Filter for ServedBy {
///     fn init(_config: &str) -> Result<Self, String> { Ok(ServedBy) }
///     fn on_response(&mut self, _req: &Request, _resp: &Response) -> Vec<HeaderOp> {
///         vec![HeaderOp::set("x-served-by", "sluicegate")]
///     }
/// }
///
/// sluicegate_sdk::export_filter!(ServedBy);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            $crate::__export_slot!(__SluicegateSlot, $ty);
            type __SluicegateFilter = $crate::glue::FilterExport<$ty, __SluicegateSlot>;
    $crate::wit::filter::export!(__SluicegateFilter with_types_in $crate::wit::filter);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __sluicegate_check<T: $crate::Filter + 'static>() {}
            let _ = __sluicegate_check::<$ty>;
        };
    };
}

/// Exports a [`HealthPolicy`](crate::HealthPolicy) implementation as the plugin's `health`
/// interface.
///
/// ```
/// use sluicegate_sdk::{HealthPolicy, ProbeResult, Verdict};
///
/// struct BodySaysOk;
///
/// impl HealthPolicy for BodySaysOk {
///     fn init(_config: &str) -> Result<Self, String> { Ok(BodySaysOk) }
///     fn judge_probe(&mut self, probe: &ProbeResult) -> Verdict {
///         if probe.body_prefix.starts_with(b"OK") { Verdict::Pass } else { Verdict::Fail }
///     }
/// }
///
/// sluicegate_sdk::export_health_policy!(BodySaysOk);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_health_policy {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            $crate::__export_slot!(__SluicegateSlot, $ty);
            type __SluicegateHealth = $crate::glue::HealthExport<$ty, __SluicegateSlot>;
    $crate::wit::health::export!(__SluicegateHealth with_types_in $crate::wit::health);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __sluicegate_check<T: $crate::HealthPolicy + 'static>() {}
            let _ = __sluicegate_check::<$ty>;
        };
    };
}

/// Declares the thread-local an export keeps its instance in, and the [`Slot`](crate::glue::Slot)
/// naming it (used by the export macros; one per export, each in its own `const` block).
#[doc(hidden)]
#[macro_export]
macro_rules! __export_slot {
    ($slot:ident, $stored:ty) => {
        struct $slot;
        ::std::thread_local! {
            static INSTANCE: ::core::cell::RefCell<::core::option::Option<$stored>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }
        impl $crate::glue::Slot<$stored> for $slot {
            fn key() -> &'static ::std::thread::LocalKey<
                ::core::cell::RefCell<::core::option::Option<$stored>>,
            > {
                &INSTANCE
            }
        }
    };
}
