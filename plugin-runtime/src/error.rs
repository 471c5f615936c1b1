//! The plugin runtime's typed errors: every message names the plugin (and version when known) and the cause,
//! so one log line is enough to tell an operator what went wrong.

use std::path::PathBuf;

/// Everything that can go wrong loading, validating, building or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No plugin of that name is loaded or embedded.
    #[error(
        "plugin `{name}` is not loaded (no such file in the plugin directory; embedded: {embedded})"
    )]
    NotFound {
        /// The name asked for.
        name: String,
        /// The embedded defaults, comma-separated, to help spot a typo.
        embedded: String,
    },
    /// A file could not be read or written.
    #[error("{context} `{}`: {source}", path.display())]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly module or component.
    #[error("plugin `{name}` from {source_desc} refused: {reason}")]
    NotWasm {
        /// The plugin name (file stem).
        name: String,
        /// Where the bytes came from.
        source_desc: String,
        /// Why they were refused.
        reason: String,
    },
    /// The bytes are Wasm but could not be componentized, compiled or linked.
    #[error("plugin `{name}` version {version} does not compile: {reason}")]
    Compile {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The compiler's or linker's message.
        reason: String,
    },
    /// The component does not export the interface a use needs.
    #[error("plugin `{name}` version {version} does not export `sluicegate:plugin/{interface}`")]
    WrongWorld {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The missing interface (`balance`, `route`, `filter`, `health`).
        interface: &'static str,
    },
    /// The plugin's `init` refused the settings of a use.
    #[error("plugin `{name}` version {version} refused its settings in init: {message}")]
    InitRefused {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The plugin's own message.
        message: String,
    },
    /// The plugin trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("plugin `{name}` version {version} trapped: {reason}")]
    Trap {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The trap as wasmtime reports it.
        reason: String,
    },
    /// The plugin panicked; the message is the one its panic hook handed to the host (the SDK's
    /// does), with the file and line.
    #[error("plugin `{name}` version {version} {message}")]
    Panic {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// `panicked at <file>:<line>:<column>: <text>`.
        message: String,
    },
    /// The call spent its CPU budget (fuel) and was stopped.
    #[error(
        "plugin `{name}` version {version} ran out of fuel: it used its budget of {budget} units (about one per Wasm instruction, a hundred per host call) in one call"
    )]
    FuelExhausted {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The budget of the call.
        budget: u64,
    },
    /// The use's circuit breaker is open after repeated faults: the plugin was not called.
    #[error(
        "plugin `{name}` version {version} is switched off by its circuit breaker (next try in {retry_in_ms} ms)"
    )]
    BreakerOpen {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// Milliseconds until the next probe call.
        retry_in_ms: u64,
    },
    /// The bytes are a version that was rolled back; it is not loaded again until the file changes.
    #[error(
        "plugin `{name}` version {version} was rolled back after its circuit breaker opened ({fault}); it is not loaded again until the file changes"
    )]
    RolledBack {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The fault that opened its breaker.
        fault: String,
    },
    /// The call ran past its deadline and was interrupted.
    #[error("plugin `{name}` version {version} exceeded its deadline of {deadline_ms} ms")]
    DeadlineExceeded {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The deadline in milliseconds.
        deadline_ms: u64,
    },
    /// The instance tried to grow its memory past the limit.
    #[error("plugin `{name}` version {version} exhausted its memory limit of {limit_bytes} bytes")]
    MemoryExhausted {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// The limit per instance.
        limit_bytes: usize,
    },
    /// The plugin answered something the host cannot use (e.g. an endpoint id not in the pool).
    #[error("plugin `{name}` version {version} gave an invalid answer: {reason}")]
    InvalidAnswer {
        /// The plugin name.
        name: String,
        /// Short sha256 of the bytes.
        version: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A call re-entered the runtime on the same thread (a host bug, never a plugin's).
    #[error("plugin `{name}` called re-entrantly on one thread")]
    Reentrant {
        /// The plugin name.
        name: String,
    },
    /// The runtime itself could not be set up (engine, epoch ticker, watcher).
    #[error("plugin runtime: {reason}")]
    Runtime {
        /// What failed.
        reason: String,
    },
}
