//! The one place the WIT interface is turned into Rust: `bindgen!` over `wit/` (world `host-view`), with the
//! `request`/`response` resources mapped to the host's own request and response heads.

use std::sync::Arc;

use super::{RequestHead, ResponseHead};

/// The `request` entry of an instance's resource table: holds the request for the length of one call (set
/// before, cleared after), so a call needs no table insertion or allocation.
pub struct RequestRef(pub Option<Arc<RequestHead>>);

/// The `response` entry of an instance's resource table, like [`RequestRef`].
pub struct ResponseRef(pub Option<Arc<ResponseHead>>);

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "host-view",
    with: {
        "sluicegate:plugin/types.request": RequestRef,
        "sluicegate:plugin/types.response": ResponseRef,
    },
    // Every import may trap: each counts against the call's budget of host calls (see `store`).
    imports: { default: trappable },
});

pub use self::sluicegate::plugin::{host, types};
pub use exports::sluicegate::plugin::{balance, filter, health, route};
