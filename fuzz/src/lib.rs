//! Fuzzing of Sluicegate's parsing paths on stable Rust (issue 26, item 7): a deterministic,
//! seeded mutational fuzzer over a corpus kept in the repository (`fuzz/corpus/<target>/`), with
//! feedback from what the proxy does (each input that makes it answer in a way not seen yet joins
//! the corpus) instead of compiler coverage, which needs nightly's cargo-fuzz.
//!
//! Targets: `config` (the config loader), `request` (raw HTTP/1.1 requests to an in-process proxy),
//! `response` (raw backend responses through it), `proxy-protocol` (PROXY headers on a `tcp`
//! listener) and `sni` (ClientHellos on a `tls-passthrough` listener). A failing input is saved to
//! `fuzz/crashes/<target>/` and replayed by `tests/fuzz.rs`; `scripts/fuzz.sh` runs long campaigns.

pub mod mutate;
pub mod net;
pub mod targets;

use mutate::{Rng, mutate};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The names of the targets, as `scripts/fuzz.sh` and the corpus directories spell them.
pub const TARGETS: &[&str] = &["config", "request", "response", "proxy-protocol", "sni"];

/// What one target checks for one input.
pub trait Target {
    /// Its name (the corpus and crash directories).
    fn name(&self) -> &'static str;
    /// Tokens the mutator inserts: the grammar's keywords and separators.
    fn dict(&self) -> &'static [&'static [u8]];
    /// The longest input worth sending.
    fn max_len(&self) -> usize;
    /// Runs one input: `Ok` with a short signature of the behaviour seen (new signatures grow the
    /// corpus), `Err` with what went wrong (a panic, a hang, a proxy that stopped serving).
    fn run(&mut self, input: &[u8]) -> Result<String, String>;
}

/// Creates the target named `name`; `cache_dir` keeps compiled plugins between runs.
pub fn target(name: &str, cache_dir: &Path) -> Option<Box<dyn Target>> {
    Some(match name {
        "config" => Box::new(targets::ConfigTarget::new()),
        "request" => Box::new(net::RequestTarget::new(cache_dir)),
        "response" => Box::new(net::ResponseTarget::new(cache_dir)),
        "proxy-protocol" => Box::new(net::ProxyProtocolTarget::new(cache_dir)),
        "sni" => Box::new(net::SniTarget::new(cache_dir)),
        _ => return None,
    })
}

/// Like [`target`], with the checks the proxy does not pass yet where a target has them (the
/// `response` target: see [`net::ResponseTarget::strict`]); the others are as [`target`] makes them.
pub fn strict_target(name: &str, cache_dir: &Path) -> Option<Box<dyn Target>> {
    match name {
        "response" => Some(Box::new(net::ResponseTarget::strict(cache_dir))),
        _ => target(name, cache_dir),
    }
}

/// How long a campaign runs: whichever of `iterations` and `time` comes first.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// The most inputs to run (the seeds included).
    pub iterations: u64,
    /// The most time to run.
    pub time: Duration,
    /// The mutator's seed.
    pub seed: u64,
}

/// An input that failed a check.
#[derive(Debug)]
pub struct Finding {
    /// What went wrong.
    pub what: String,
    /// Where the input was saved.
    pub saved: PathBuf,
}

/// What a campaign did.
#[derive(Debug)]
pub struct Report {
    /// The target.
    pub target: &'static str,
    /// Inputs run.
    pub iterations: u64,
    /// How long.
    pub elapsed: Duration,
    /// Distinct behaviours seen.
    pub signatures: usize,
    /// The corpus at the end (seeds and the inputs that found new behaviour).
    pub corpus: usize,
    /// Failures (at most [`MAX_FINDINGS`]).
    pub findings: Vec<Finding>,
}

impl Report {
    /// Inputs per second.
    pub fn rate(&self) -> f64 {
        self.iterations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A campaign stops after this many failures: each is saved; more are usually the same bug.
pub const MAX_FINDINGS: usize = 3;

/// The in-memory corpus stops growing here, so a long campaign keeps a bounded memory.
const MAX_CORPUS: usize = 4096;

/// The crate's directory: the corpus and crashes live under it.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir` (sorted by name, so that runs are reproducible), empty if it does not exist.
pub fn read_dir_sorted(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect()
}

/// FNV-1a: a stable name for an input file.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Saves a failing input as `fuzz/crashes/<target>/<hash>`, next to a note of what failed.
pub fn save_crash(target: &str, input: &[u8], what: &str) -> PathBuf {
    let dir = root().join("crashes").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{:016x}", fnv(input)));
    let _ = std::fs::write(&path, input);
    let _ = std::fs::write(path.with_extension("txt"), what);
    path
}

/// Runs `target` over its corpus, then mutations of it, within `budget`.
pub fn campaign(target: &mut dyn Target, budget: Budget) -> Report {
    let name = target.name();
    let mut corpus: Vec<Vec<u8>> = read_dir_sorted(&root().join("corpus").join(name))
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let seeds = corpus.len();
    let mut rng = Rng::new(budget.seed);
    let mut signatures = HashSet::new();
    let mut findings = Vec::new();
    let start = Instant::now();
    let mut iterations = 0u64;
    while iterations < budget.iterations && start.elapsed() < budget.time {
        // The seeds first, as they are: each must pass before any mutation of it means anything.
        let input = if (iterations as usize) < seeds {
            corpus[iterations as usize].clone()
        } else {
            let base = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, base, &corpus, target.dict(), target.max_len())
        };
        iterations += 1;
        match target.run(&input) {
            Ok(signature) => {
                if signatures.insert(signature) && corpus.len() < MAX_CORPUS {
                    corpus.push(input);
                }
            }
            Err(what) => {
                let saved = save_crash(name, &input, &what);
                findings.push(Finding { what, saved });
                if findings.len() >= MAX_FINDINGS {
                    break;
                }
            }
        }
    }
    Report {
        target: name,
        iterations,
        elapsed: start.elapsed(),
        signatures: signatures.len(),
        corpus: corpus.len(),
        findings,
    }
}

/// Runs every saved crash of `target` once: the failures that remain, with their files.
pub fn replay_crashes(target: &mut dyn Target) -> Vec<(PathBuf, String)> {
    read_dir_sorted(&root().join("crashes").join(target.name()))
        .into_iter()
        .filter(|(p, _)| p.extension().is_none())
        .filter_map(|(p, bytes)| target.run(&bytes).err().map(|e| (p, e)))
        .collect()
}
