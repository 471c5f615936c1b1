//! The `sluicegate` command line.
fn main() {}
