//! The generated bindings and the glue from them to the curated API (Wasm only).
//!
//! One `generate!` per world. The `balancer` world generates the shared `types` and `host`; the
//! others reuse them through `with:` (one `Request` type, one set of imports), whose keys repeat the
//! WIT version: wit-bindgen refuses a key it does not find, so they cannot drift from the package.
//! With `pub_export_macro` the SDK's own custom sections describe imports only; each world's full
//! description (with its exports) is emitted by the export macro in the plugin crate, so a plugin
//! declares exactly the interfaces it exports. The glue from these bindings to the plugin traits is
//! in `glue`, above them.
#![allow(missing_docs, unsafe_code, clippy::all)]

pub use wit_bindgen;

/// The `balancer` world; it also generates the shared `types` and `host` imports.
pub mod balancer {
    wit_bindgen::generate!({
        world: "balancer",
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "$crate::wit::balancer",
    });
}

/// The `router` world.
pub mod router {
    wit_bindgen::generate!({
        world: "router",
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "$crate::wit::router",
        with: {
            "sluicegate:plugin/types@0.3.0": crate::wit::types,
            "sluicegate:plugin/host@0.3.0": crate::wit::host,
        },
    });
}

/// The `filter-plugin` world.
pub mod filter {
    wit_bindgen::generate!({
        world: "filter-plugin",
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "$crate::wit::filter",
        with: {
            "sluicegate:plugin/types@0.3.0": crate::wit::types,
            "sluicegate:plugin/host@0.3.0": crate::wit::host,
        },
    });
}

/// The `health-policy` world.
pub mod health {
    wit_bindgen::generate!({
        world: "health-policy",
        path: "wit",
        pub_export_macro: true,
        default_bindings_module: "$crate::wit::health",
        with: {
            "sluicegate:plugin/types@0.3.0": crate::wit::types,
            "sluicegate:plugin/host@0.3.0": crate::wit::host,
        },
    });
}

pub use balancer::sluicegate::plugin::{host, types};
