//! Sticky sessions: one component exporting a balancer that follows a cookie to its endpoint and
//! a filter that sets that cookie on responses; both read the same settings table.
//!
#![doc = include_str!("../README.md")]

mod balancer;
mod filter;
mod settings;

pub use balancer::StickyBalancer;
pub use filter::StickyFilter;
pub use settings::Settings;

sluicegate_sdk::export_balancer!(StickyBalancer);
sluicegate_sdk::export_filter!(StickyFilter);

#[cfg(test)]
mod tests;
