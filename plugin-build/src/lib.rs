//! `sluicegate plugin build`: turns a plugin crate into a validated component with whichever wasm toolchain the
//! machine has (rustup's `wasm32-unknown-unknown` target, or Debian's `rustc-web` with build-std), so plugin
//! authors need nothing beyond cargo. Builds are fast, reproducible (`panic=abort`, `opt-level = 3`, stripped,
//! checkout paths remapped) and land in `<workspace target>/wasm-plugins`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// A plugin crate that could not be built into a component.
#[derive(Debug, thiserror::Error)]
#[error("plugin build of `{}` failed: {reason}", crate_dir.display())]
pub struct BuildError {
    /// The plugin crate.
    pub crate_dir: PathBuf,
    /// What failed, and what to do about it where we know.
    pub reason: String,
}

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_PACKAGES: &str = "rustc-web cargo-web rust-web-src lld-22";

/// One build at a time per process: parallel tests and the CLI share the target dir (cargo locks it too, but
/// this keeps the output file writes and the optional apt-get install serialized).
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// The toolchain a build uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Toolchain {
    /// rustup with the `wasm32-unknown-unknown` target installed: plain cargo.
    Rustup,
    /// Debian's `rustc-web` with the std sources: nightly-style build-std through `RUSTC_BOOTSTRAP`.
    Debian,
}

/// What `cargo metadata` tells us about the crate.
#[derive(Debug)]
struct CrateInfo {
    package: String,
    artifact: String,
    workspace_root: PathBuf,
    target_dir: PathBuf,
}

/// Builds the plugin crate at `crate_dir` into a component and returns its path. `out` defaults to
/// `<workspace target>/wasm-plugins/dist/<package>.wasm`.
pub fn build_plugin(crate_dir: &Path, out: Option<&Path>) -> Result<PathBuf, BuildError> {
    let _serial = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let fail = |reason: String| BuildError {
        crate_dir: crate_dir.to_owned(),
        reason,
    };
    let crate_dir = crate_dir
        .canonicalize()
        .map_err(|e| fail(format!("cannot find the crate directory: {e}")))?;
    let fail = |reason: String| BuildError {
        crate_dir: crate_dir.clone(),
        reason,
    };
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(fail("no Cargo.toml in the crate directory".into()));
    }
    let toolchain = choose_toolchain().map_err(fail)?;
    let info = crate_info(toolchain, &manifest).map_err(fail)?;
    let build_dir = info.target_dir.join("wasm-plugins");
    let mut cmd = cargo(toolchain);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&build_dir)
        .args(profile_config());
    if toolchain == Toolchain::Debian {
        cmd.args(["-Z", "build-std=std,panic_abort", "--config"])
            .arg(format!("target.{TARGET}.linker=\"wasm-ld-22\""));
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        remap_flags(&info.workspace_root).join("\x1f"),
    );
    let output = cmd
        .output()
        .map_err(|e| fail(format!("cannot run cargo: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "cargo build failed ({}):\n{}",
            output.status,
            tail(&output.stderr, 40)
        )));
    }
    let core = build_dir.join(TARGET).join("release").join(&info.artifact);
    let bytes = std::fs::read(&core).map_err(|e| {
        fail(format!(
            "cargo did not produce `{}` ({e}); is the crate a `cdylib` (crate-type = [\"cdylib\"])?",
            core.display()
        ))
    })?;
    let component = sluicegate_plugin_runtime::componentize_checked(&info.package, bytes)
        .map_err(|e| fail(e.to_string()))?;
    let out = match out {
        Some(o) => o.to_owned(),
        None => build_dir
            .join("dist")
            .join(format!("{}.wasm", info.package)),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create `{}`: {e}", dir.display())))?;
    }
    // Write then rename, so a watcher never sees half a plugin.
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &component)
        .map_err(|e| fail(format!("cannot write `{}`: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &out)
        .map_err(|e| fail(format!("cannot write `{}`: {e}", out.display())))?;
    tracing::info!(plugin = %info.package, out = %out.display(), bytes = component.len(), "plugin built");
    Ok(out)
}

/// Release profile settings: abort on panic (no unwinding in the sandbox), reproducible, optimized for speed.
/// `opt-level = 3` rather than `"s"`: at `"s"` LLVM leaves the bindings' glue, the allocator's wrappers and small
/// accessors as separate functions, and each Wasm call costs a frame, a stack check and an epoch check once
/// compiled, which about doubled the default router's call (`bench/LOG.md#round-11`).
fn profile_config() -> Vec<String> {
    [
        "profile.release.panic=\"abort\"",
        "profile.release.opt-level=3",
        "profile.release.lto=true",
        "profile.release.codegen-units=1",
        "profile.release.strip=true",
        "profile.release.debug=false",
    ]
    .into_iter()
    .flat_map(|c| ["--config".to_owned(), c.to_owned()])
    .collect()
}

/// Maps the checkout and cargo home paths to fixed names so the output does not depend on where they are.
fn remap_flags(workspace_root: &Path) -> Vec<String> {
    let mut flags = vec![format!(
        "--remap-path-prefix={}=/sluicegate",
        workspace_root.display()
    )];
    if let Some(home) = cargo_home() {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    flags
}

fn cargo_home() -> Option<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
}

/// A cargo command for `toolchain`, with the environment an outer cargo (e.g. `cargo test`) leaks removed.
fn cargo(toolchain: Toolchain) -> Command {
    let mut cmd = match toolchain {
        Toolchain::Rustup => Command::new("cargo"),
        Toolchain::Debian => Command::new("/usr/bin/cargo"),
    };
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if leaks(key) || (toolchain == Toolchain::Debian && key == "RUSTUP_TOOLCHAIN") {
            cmd.env_remove(key);
        }
    }
    if toolchain == Toolchain::Debian {
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1");
    }
    cmd
}

/// Whether an environment variable set by an outer cargo would change the inner build.
fn leaks(key: &str) -> bool {
    const KEEP: [&str; 6] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    if let Some(rest) = key.strip_prefix("CARGO") {
        return !KEEP.iter().any(|k| key.starts_with(k)) || rest.is_empty();
    }
    matches!(
        key,
        "RUSTFLAGS"
            | "RUSTC"
            | "RUSTC_WRAPPER"
            | "RUSTC_WORKSPACE_WRAPPER"
            | "RUSTDOC"
            | "RUSTDOCFLAGS"
            | "RUSTC_BOOTSTRAP"
            | "MAKEFLAGS"
            | "MFLAGS"
            | "CARGO_MAKEFLAGS"
    )
}

/// Picks the toolchain, installing Debian's when we are root with apt-get and nothing else is there.
fn choose_toolchain() -> Result<Toolchain, String> {
    if rustup_has_wasm_target() {
        return Ok(Toolchain::Rustup);
    }
    if debian_toolchain_present() {
        return Ok(Toolchain::Debian);
    }
    if is_root() && Path::new("/usr/bin/apt-get").exists() {
        install_debian_toolchain()?;
        if debian_toolchain_present() {
            return Ok(Toolchain::Debian);
        }
        return Err(format!(
            "installed {DEBIAN_PACKAGES} but /usr/bin/rustc, the std sources or wasm-ld-22 are still missing"
        ));
    }
    Err(format!(
        "no toolchain for {TARGET}: run `rustup target add {TARGET}`, or on Debian/Ubuntu \
         `apt-get install {DEBIAN_PACKAGES}` (provides /usr/bin/rustc, /usr/lib/rustlib/src/rust and wasm-ld-22)"
    ))
}

fn rustup_has_wasm_target() -> bool {
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "list", "--installed"]);
    match cmd.output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .any(|l| l.trim() == TARGET),
        _ => false,
    }
}

fn debian_toolchain_present() -> bool {
    Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/rustlib/src/rust").exists()
        && which("wasm-ld-22")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .is_some_and(|uid| uid == "0")
    })
}

fn install_debian_toolchain() -> Result<(), String> {
    tracing::warn!("no wasm toolchain found; installing {DEBIAN_PACKAGES} with apt-get");
    let run = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("/usr/bin/apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "apt-get {} failed:\n{}",
                args.join(" "),
                tail(&output.stderr, 20)
            ))
        }
    };
    run(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(DEBIAN_PACKAGES.split(' '));
    run(&install)
}

/// Package name, cdylib artifact and directories of the crate, from `cargo metadata`.
fn crate_info(toolchain: Toolchain, manifest: &Path) -> Result<CrateInfo, String> {
    let output = cargo(toolchain)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed:\n{}",
            tail(&output.stderr, 20)
        ));
    }
    parse_metadata(&output.stdout, manifest)
}

fn parse_metadata(json: &[u8], manifest: &Path) -> Result<CrateInfo, String> {
    let meta: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("cannot parse cargo metadata: {e}"))?;
    let str_of =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_owned);
    let package = meta
        .get("packages")
        .and_then(|p| p.as_array())
        .and_then(|ps| {
            ps.iter()
                .find(|p| str_of(p, "manifest_path").is_some_and(|m| Path::new(&m) == manifest))
        })
        .ok_or("cargo metadata does not list the crate's package")?;
    let name = str_of(package, "name").ok_or("the package has no name")?;
    let lib = package
        .get("targets")
        .and_then(|t| t.as_array())
        .and_then(|ts| {
            ts.iter().find(|t| {
                t.get("crate_types")
                    .and_then(|c| c.as_array())
                    .is_some_and(|c| c.iter().any(|c| c.as_str() == Some("cdylib")))
            })
        })
        .ok_or("the crate has no cdylib target: add `[lib] crate-type = [\"cdylib\"]` to its Cargo.toml")?;
    let lib_name = str_of(lib, "name").ok_or("the cdylib target has no name")?;
    Ok(CrateInfo {
        package: name,
        artifact: format!("{}.wasm", lib_name.replace('-', "_")),
        workspace_root: str_of(&meta, "workspace_root")
            .ok_or("cargo metadata has no workspace_root")?
            .into(),
        target_dir: str_of(&meta, "target_directory")
            .ok_or("cargo metadata has no target_directory")?
            .into(),
    })
}

/// The last `n` lines of a tool's output.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_cargo_env_is_stripped_but_home_and_network_settings_kept() {
        for k in [
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_ENCODED_RUSTFLAGS",
            "RUSTFLAGS",
            "RUSTC",
            "CARGO",
        ] {
            assert!(leaks(k), "{k}");
        }
        for k in ["MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "RUSTC_WRAPPER"] {
            assert!(leaks(k), "{k}");
        }
        for k in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_HTTP_PROXY",
            "PATH",
            "HOME",
        ] {
            assert!(!leaks(k), "{k}");
        }
    }

    #[test]
    fn metadata_gives_package_artifact_and_dirs() {
        let json = br#"{"packages":[{"name":"pick-first","manifest_path":"/w/tests/plugins/pick-first/Cargo.toml",
            "targets":[{"name":"pick-first","crate_types":["cdylib","rlib"]}]}],
            "workspace_root":"/w","target_directory":"/w/target"}"#;
        let info =
            parse_metadata(json, Path::new("/w/tests/plugins/pick-first/Cargo.toml")).unwrap();
        assert_eq!(info.package, "pick-first");
        assert_eq!(info.artifact, "pick_first.wasm");
        assert_eq!(info.target_dir, PathBuf::from("/w/target"));
        assert_eq!(info.workspace_root, PathBuf::from("/w"));
        let no_cdylib = br#"{"packages":[{"name":"x","manifest_path":"/w/Cargo.toml",
            "targets":[{"name":"x","crate_types":["lib"]}]}],"workspace_root":"/w","target_directory":"/w/target"}"#;
        assert!(
            parse_metadata(no_cdylib, Path::new("/w/Cargo.toml"))
                .unwrap_err()
                .contains("cdylib")
        );
    }

    #[test]
    fn profile_and_remap_flags() {
        let cfg = profile_config().join(" ");
        assert!(cfg.contains("profile.release.panic=\"abort\""));
        assert!(cfg.contains("profile.release.lto=true"));
        let flags = remap_flags(Path::new("/some/checkout"));
        assert_eq!(flags[0], "--remap-path-prefix=/some/checkout=/sluicegate");
    }
}
