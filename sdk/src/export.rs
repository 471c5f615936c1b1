//! The export macros: one line in a plugin crate turns a type implementing a plugin trait into
//! the matching component export. In the Wasm build they expand to the generated bindings'
//! export glue plus the custom section describing that world; natively they only check that the
//! type implements the trait, so the same crate unit-tests with plain `cargo test`.

/// Exports a [`Balancer`](crate::Balancer) implementation as the plugin's `balance` interface.
///
/// ```ignore
/// sluicegate_sdk::export_balancer!(MyBalancer);
/// ```
#[macro_export]
macro_rules! export_balancer {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            type __SluicegateBalancer = $crate::wit::BalancerExport<$ty>;
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
/// ```ignore
/// sluicegate_sdk::export_router!(MyRouter);
/// ```
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            type __SluicegateRouter = $crate::wit::RouterExport<$ty>;
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
/// ```ignore
/// sluicegate_sdk::export_filter!(MyFilter);
/// ```
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            type __SluicegateFilter = $crate::wit::FilterExport<$ty>;
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
/// ```ignore
/// sluicegate_sdk::export_health_policy!(MyPolicy);
/// ```
#[macro_export]
macro_rules! export_health_policy {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code, non_camel_case_types)]
        const _: () = {
            type __SluicegateHealth = $crate::wit::HealthExport<$ty>;
    $crate::wit::health::export!(__SluicegateHealth with_types_in $crate::wit::health);
        };
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            fn __sluicegate_check<T: $crate::HealthPolicy + 'static>() {}
            let _ = __sluicegate_check::<$ty>;
        };
    };
}
