//! The one place the WIT interface is turned into Rust: `bindgen!` over `wit/` (world `host-view`), with the
//! `request`/`response` resources mapped to the host's own request and response heads.

use std::sync::Arc;

use super::{RequestHead, ResponseHead};

/// What a `request` resource handle points at in the store's table for the length of one call.
pub struct RequestRef(pub Arc<RequestHead>);

/// What a `response` resource handle points at in the store's table for the length of one call.
pub struct ResponseRef(pub Arc<ResponseHead>);

wasmtime::component::bindgen!({
    path: "../wit",
    world: "host-view",
    with: {
        "sluicegate:plugin/types.request": RequestRef,
        "sluicegate:plugin/types.response": ResponseRef,
    },
});

pub use exports::sluicegate::plugin::{balance, filter, health, route};
pub use sluicegate::plugin::{host, types};
