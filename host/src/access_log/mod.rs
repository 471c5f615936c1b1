//! The access log, cheap enough to leave on: each worker thread formats its lines into its own
//! buffer (no allocation, no lock another worker takes, no wake-up per line); a full buffer, and
//! every buffer once per `flush`, goes to one writer thread through a bounded queue. A disk that
//! cannot keep up costs dropped, counted lines (or, when configured, waiting), never unbounded
//! memory. The file is reopened on SIGUSR1 and when it has been renamed or removed (log rotation).

mod line;

pub(crate) use line::{ConnectionLine, RequestLine};

use line::Format;

use crate::metrics::AccessLogMetrics;
use sluicegate_config::{AccessLogConfig, WhenFull};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use thread_local::ThreadLocal;

/// Where access log lines go. Cheap to clone; lines written through any clone share the batching.
#[derive(Clone, Debug)]
pub struct AccessLog {
    inner: Option<Arc<Shared>>,
}

#[derive(Debug)]
struct Shared {
    format: Format,
    when_full: WhenFull,
    batches: Arc<Batches>,
    tx: SyncSender<Msg>,
}

/// What the workers and the writer share.
#[derive(Debug)]
struct Batches {
    /// Each thread's buffer; the writer takes them by turns, so the lock is the owner's but for
    /// an instant per `flush`.
    per_thread: ThreadLocal<Mutex<Batch>>,
    /// Buffers written and given back, so a full buffer is swapped for one already allocated.
    spare: Mutex<Vec<Vec<u8>>>,
    /// Bytes gathered per thread before a hand-off.
    buffer: usize,
    stats: AccessLogMetrics,
    /// Asked to reopen the file (SIGUSR1).
    reopen: AtomicBool,
}

#[derive(Debug, Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: u64,
}

#[derive(Debug)]
enum Msg {
    Batch(Batch),
    /// Write everything gathered so far, then answer.
    Sync(mpsc::Sender<()>),
    /// Look at `Batches::reopen`.
    Wake,
}

/// Spare buffers kept beyond the ones in use.
const SPARE: usize = 8;

/// How long [`AccessLog::flush`] waits for the writer (a disk that hangs must not hang shutdown).
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// Write errors are logged once per this interval (with a count), not once per batch.
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(60);

impl AccessLog {
    /// A log that writes nothing.
    pub fn disabled() -> Self {
        AccessLog { inner: None }
    }

    /// The log `config` asks for: disabled, appended to its file (created when missing), or
    /// written to stdout.
    pub fn open(config: &AccessLogConfig, stats: AccessLogMetrics) -> std::io::Result<Self> {
        if !config.enabled {
            return Ok(Self::disabled());
        }
        let sink = match &config.path {
            Some(path) => Sink::File(LogFile::open(path)?),
            None => Sink::Writer(Box::new(std::io::stdout())),
        };
        Ok(Self::start(config, sink, stats))
    }

    fn start(config: &AccessLogConfig, sink: Sink, stats: AccessLogMetrics) -> Self {
        let depth = (config.max_pending / config.buffer).max(1);
        let (tx, rx) = mpsc::sync_channel(depth);
        let batches = Arc::new(Batches {
            per_thread: ThreadLocal::new(),
            spare: Mutex::new(Vec::new()),
            buffer: config.buffer,
            stats,
            reopen: AtomicBool::new(false),
        });
        let writer = Writer {
            rx,
            batches: batches.clone(),
            sink,
            flush: config.flush,
            acks: Vec::new(),
            errors_since_report: 0,
            last_report: None,
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
            .expect("spawning the access log thread");
        AccessLog {
            inner: Some(Arc::new(Shared {
                format: Format::new(&config.format),
                when_full: config.when_full,
                batches,
                tx,
            })),
        }
    }

    /// Whether lines are written at all (callers skip gathering their values otherwise).
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Logs a request.
    pub(crate) fn request(&self, line: &RequestLine) {
        self.append(|format, out| line.write(format, out));
    }

    /// Logs an L4 connection.
    pub(crate) fn connection(&self, line: &ConnectionLine) {
        self.append(|format, out| line.write(format, out));
    }

    fn append(&self, write: impl FnOnce(&Format, &mut Vec<u8>)) {
        let Some(shared) = &self.inner else { return };
        let batches = &shared.batches;
        let slot = batches.per_thread.get_or(|| Mutex::new(batches.fresh()));
        let mut batch = slot.lock().unwrap_or_else(PoisonError::into_inner);
        write(&shared.format, &mut batch.bytes);
        batch.lines += 1;
        if batch.bytes.len() < batches.buffer {
            return;
        }
        let full = std::mem::replace(&mut *batch, batches.fresh());
        // Queued with the lock held, so the writer, which takes this thread's later lines under
        // the same lock, finds this batch queued before them.
        let Err(TrySendError::Full(Msg::Batch(full))) = shared.tx.try_send(Msg::Batch(full)) else {
            return;
        };
        match shared.when_full {
            WhenFull::Drop => {
                batches.stats.dropped.inc_by(full.lines);
                batches.give_back(full.bytes);
            }
            WhenFull::Wait => {
                // Waits with the lock released (the writer may need it to make room); the
                // thread's buffer is empty meanwhile, so nothing can overtake this batch.
                drop(batch);
                let _ = shared.tx.send(Msg::Batch(full));
            }
        }
    }

    /// Writes every line gathered so far and waits (bounded) until the writer has: at shutdown,
    /// so the last requests are in the file when the process exits.
    pub fn flush(&self) {
        let Some(shared) = &self.inner else { return };
        let (ack, done) = mpsc::channel();
        if shared.tx.send(Msg::Sync(ack)).is_ok() && done.recv_timeout(SYNC_WAIT).is_err() {
            tracing::warn!("the access log writer did not finish within {SYNC_WAIT:?}");
        }
    }

    /// Asks the writer to reopen the file (SIGUSR1, after a rotation renamed it).
    pub fn reopen(&self) {
        let Some(shared) = &self.inner else { return };
        shared.batches.reopen.store(true, Relaxed);
        // A full queue means the writer is busy and sees the flag after its current batch.
        let _ = shared.tx.try_send(Msg::Wake);
    }
}

impl Batches {
    /// An empty batch, its buffer reused when one is spare.
    fn fresh(&self) -> Batch {
        let reused = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        Batch {
            // Room for the line that crosses `buffer`, so the buffer rarely grows.
            bytes: reused.unwrap_or_else(|| Vec::with_capacity(self.buffer + 4096)),
            lines: 0,
        }
    }

    fn give_back(&self, mut bytes: Vec<u8>) {
        bytes.clear();
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < SPARE {
            spare.push(bytes);
        }
    }
}

/// Where the writer writes.
enum Sink {
    File(LogFile),
    Writer(Box<dyn Write + Send>),
}

/// The log file, and which file it is, to notice a rename or removal.
struct LogFile {
    path: PathBuf,
    file: File,
    id: (u64, u64),
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<LogFile> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let m = file.metadata()?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            id: (m.dev(), m.ino()),
        })
    }

    /// Whether the path now names another file, or none.
    fn moved(&self) -> bool {
        std::fs::metadata(&self.path).map_or(true, |m| (m.dev(), m.ino()) != self.id)
    }
}

/// The thread that writes batches as they come and gathers the workers' buffers once per `flush`.
struct Writer {
    rx: Receiver<Msg>,
    batches: Arc<Batches>,
    sink: Sink,
    flush: Duration,
    /// `flush` calls to answer once the current gathering is written.
    acks: Vec<mpsc::Sender<()>>,
    errors_since_report: u64,
    last_report: Option<Instant>,
}

impl Writer {
    fn run(mut self) {
        let mut tick = Instant::now() + self.flush;
        loop {
            let wait = tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Batch(b)) => self.write(b),
                Ok(Msg::Sync(ack)) => {
                    self.acks.push(ack);
                    self.gather();
                }
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle is gone: what is left in the buffers is the last of it.
                    self.gather();
                    return;
                }
            }
            if self.batches.reopen.swap(false, Relaxed) {
                self.reopen("SIGUSR1");
            }
            if Instant::now() >= tick {
                self.gather();
                if let Sink::File(f) = &self.sink
                    && f.moved()
                {
                    self.reopen("the file was renamed or removed");
                }
                tick = Instant::now() + self.flush;
            }
        }
    }

    /// Writes every thread's buffer, then flushes. A thread hands off a full buffer while holding
    /// its lock (see [`AccessLog::append`]), so whatever it handed off before the lines taken here
    /// is already queued: written first, a thread's lines stay in order.
    fn gather(&mut self) {
        let batches = self.batches.clone();
        for slot in batches.per_thread.iter() {
            let (queued, current) = {
                let mut batch = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if batch.lines == 0 {
                    continue;
                }
                let queued: Vec<Msg> = self.rx.try_iter().collect();
                (queued, std::mem::replace(&mut *batch, batches.fresh()))
            };
            // Written with the thread's lock released: the disk never holds up a worker.
            for msg in queued {
                match msg {
                    Msg::Batch(b) => self.write(b),
                    Msg::Sync(ack) => self.acks.push(ack),
                    Msg::Wake => {}
                }
            }
            self.write(current);
        }
        if let Sink::Writer(w) = &mut self.sink
            && let Err(e) = w.flush()
        {
            self.failed(&e);
        }
        for ack in self.acks.drain(..) {
            let _ = ack.send(());
        }
    }

    fn write(&mut self, batch: Batch) {
        let result = match &mut self.sink {
            Sink::File(f) => f.file.write_all(&batch.bytes),
            Sink::Writer(w) => w.write_all(&batch.bytes),
        };
        let stats = &self.batches.stats;
        match result {
            Ok(()) => {
                stats.written.inc_by(batch.lines);
            }
            Err(e) => {
                stats.dropped.inc_by(batch.lines);
                self.failed(&e);
            }
        }
        self.batches.give_back(batch.bytes);
    }

    fn reopen(&mut self, why: &str) {
        let Sink::File(f) = &mut self.sink else {
            return;
        };
        match LogFile::open(&f.path) {
            Ok(new) => {
                *f = new;
                self.batches.stats.reopened.inc();
                tracing::info!(path = %f.path.display(), why, "access log reopened");
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Counts an error, and logs it unless one was logged within the interval.
    fn failed(&mut self, e: &std::io::Error) {
        self.batches.stats.errors.inc();
        self.errors_since_report += 1;
        if self
            .last_report
            .is_none_or(|t| t.elapsed() >= ERROR_REPORT_INTERVAL)
        {
            let path = match &self.sink {
                Sink::File(f) => f.path.display().to_string(),
                Sink::Writer(_) => "stdout".into(),
            };
            tracing::error!(
                %path,
                error = %e,
                errors = self.errors_since_report,
                "cannot write the access log; its lines are dropped until it can"
            );
            self.errors_since_report = 0;
            self.last_report = Some(Instant::now());
        }
    }
}

/// Reopens `log` on every SIGUSR1 (logrotate's `postrotate` convention), until the process ends.
pub async fn reopen_on_sigusr1(log: AccessLog) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            while usr1.recv().await.is_some() {
                log.reopen();
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1: the access log is reopened only when renamed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Condvar;

    /// What the writer wrote, and a gate that holds every write while closed (a stalled disk).
    #[derive(Clone, Default)]
    struct Disk(Arc<(Mutex<Written>, Condvar)>);

    /// The bytes, and whether writes wait.
    type Written = (Vec<u8>, bool);

    impl Disk {
        fn stalled() -> Disk {
            let d = Disk::default();
            d.0.0.lock().unwrap().1 = true;
            d
        }
        fn resume(&self) {
            self.0.0.lock().unwrap().1 = false;
            self.0.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0.0.lock().unwrap().0.clone()).unwrap()
        }
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut g = cv.wait_while(lock.lock().unwrap(), |g| g.1).unwrap();
            g.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn config(buffer: usize, flush: Duration, max_pending: usize) -> AccessLogConfig {
        AccessLogConfig {
            buffer,
            flush,
            max_pending,
            ..AccessLogConfig::default()
        }
    }

    fn log_to(config: &AccessLogConfig, disk: &Disk) -> (AccessLog, AccessLogMetrics) {
        let stats = AccessLogMetrics::default();
        let log = AccessLog::start(config, Sink::Writer(Box::new(disk.clone())), stats.clone());
        (log, stats)
    }

    /// Writes one L4 line with `id` as its connection id.
    fn line(log: &AccessLog, id: &str) {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        log.connection(&ConnectionLine {
            connection_id: id,
            protocol: "tcp",
            listener: addr,
            client: addr,
            sni: None,
            cluster: None,
            endpoint: None,
            attempts: 0,
            tried: &[],
            from_client: 0,
            to_client: 0,
            connect: None,
            duration: Duration::ZERO,
            reason: None,
        });
    }

    fn ids(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
                v["connection_id"].as_str().unwrap().to_string()
            })
            .collect()
    }

    /// Polls `done` every 10 ms for up to 10 s.
    fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        done()
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_order_on_flush() {
        let disk = Disk::default();
        let (log, stats) = log_to(&config(4096, Duration::from_secs(3600), 1 << 20), &disk);
        std::thread::scope(|s| {
            for t in 0..4 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..1000 {
                        line(log, &format!("{t}-{i}"));
                    }
                });
            }
        });
        log.flush();
        let ids = ids(&disk.text());
        assert_eq!(ids.len(), 4000);
        for t in 0..4 {
            let mine: Vec<&String> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("{t}-")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("{t}-{i}")).collect();
            assert!(mine.iter().zip(&expected).all(|(a, b)| *a == b) && mine.len() == 1000);
        }
        assert_eq!((stats.written.get(), stats.dropped.get()), (4000, 0));
    }

    #[test]
    fn a_full_buffer_is_written_at_once_and_a_partial_one_within_flush() {
        let disk = Disk::default();
        let (log, _) = log_to(&config(4096, Duration::from_secs(3600), 1 << 20), &disk);
        let mut n = 0;
        while n * 150 < 4096 * 2 {
            line(&log, &n.to_string());
            n += 1;
        }
        assert!(
            eventually(|| !disk.text().is_empty()),
            "a full buffer waits for nothing"
        );
        assert!(ids(&disk.text()).len() < n, "the partial buffer waits");

        let disk = Disk::default();
        let (log, _) = log_to(&config(4096, Duration::from_millis(50), 1 << 20), &disk);
        line(&log, "alone");
        assert!(
            eventually(|| ids(&disk.text()) == ["alone"]),
            "one line is written within `flush`, with no further line to push it"
        );
    }

    #[test]
    fn a_stalled_disk_costs_counted_drops_and_bounded_memory_never_the_caller_waiting() {
        let disk = Disk::stalled();
        let (log, stats) = log_to(&config(4096, Duration::from_secs(3600), 8192), &disk);
        // The caller never blocks: this loop ends while the disk is stalled.
        for i in 0..100_000 {
            line(&log, &i.to_string());
        }
        assert!(stats.dropped.get() > 90_000, "{}", stats.dropped.get());
        disk.resume();
        log.flush();
        let written = disk.text();
        assert_eq!(
            stats.written.get() + stats.dropped.get(),
            100_000,
            "every line written or counted"
        );
        assert_eq!(ids(&written).len() as u64, stats.written.get());
        // Held meanwhile: the batch being written, two queued (8 KB of 4 KB batches) and the
        // caller's own buffer, each at most a line over 4 KB.
        assert!(written.len() <= 4 * (4096 + 256), "{}", written.len());
    }

    #[test]
    fn when_full_wait_loses_nothing() {
        let disk = Disk::stalled();
        let config = AccessLogConfig {
            when_full: WhenFull::Wait,
            ..config(4096, Duration::from_secs(3600), 8192)
        };
        let (log, stats) = log_to(&config, &disk);
        let writer = std::thread::spawn({
            let log = log.clone();
            move || (0..20_000).for_each(|i| line(&log, &i.to_string()))
        });
        // The caller waits for the disk: only a bounded amount got past it meanwhile.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !writer.is_finished(),
            "the caller waits while the disk is stalled"
        );
        disk.resume();
        writer.join().unwrap();
        log.flush();
        assert_eq!(ids(&disk.text()).len(), 20_000);
        assert_eq!((stats.written.get(), stats.dropped.get()), (20_000, 0));
    }

    #[test]
    fn a_threads_lines_stay_in_order_however_often_buffers_are_gathered() {
        /// A disk that takes a while per write, so hand-offs queue up behind gatherings.
        struct Slow(Disk);
        impl Write for Slow {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_micros(300));
                self.0.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let disk = Disk::default();
        let config = AccessLogConfig {
            when_full: WhenFull::Wait,
            ..config(4096, Duration::from_micros(100), 16384)
        };
        let stats = AccessLogMetrics::default();
        let log = AccessLog::start(&config, Sink::Writer(Box::new(Slow(disk.clone()))), stats);
        std::thread::scope(|s| {
            for t in 0..2 {
                let log = &log;
                s.spawn(move || {
                    for i in 0..3000 {
                        line(log, &format!("{t}-{i}"));
                    }
                });
            }
        });
        log.flush();
        let ids = ids(&disk.text());
        assert_eq!(ids.len(), 6000);
        for t in 0..2 {
            let mine: Vec<String> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("{t}-")))
                .cloned()
                .collect();
            let expected: Vec<String> = (0..3000).map(|i| format!("{t}-{i}")).collect();
            assert!(mine == expected, "thread {t}'s lines are out of order");
        }
    }

    #[test]
    fn failed_writes_are_counted_as_errors_and_dropped_lines() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk gone"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let stats = AccessLogMetrics::default();
        let log = AccessLog::start(
            &config(4096, Duration::from_secs(3600), 1 << 20),
            Sink::Writer(Box::new(Broken)),
            stats.clone(),
        );
        for i in 0..10 {
            line(&log, &i.to_string());
        }
        log.flush();
        assert_eq!((stats.written.get(), stats.dropped.get()), (0, 10));
        assert!(stats.errors.get() >= 1);
    }

    fn file_log(path: &Path, flush: Duration) -> (AccessLog, AccessLogMetrics) {
        let config = AccessLogConfig {
            path: Some(path.to_path_buf()),
            ..config(4096, flush, 1 << 20)
        };
        let stats = AccessLogMetrics::default();
        (AccessLog::open(&config, stats.clone()).unwrap(), stats)
    }

    fn file_ids(path: &Path) -> Vec<String> {
        ids(&std::fs::read_to_string(path).unwrap_or_default())
    }

    #[test]
    fn a_renamed_or_removed_file_is_reopened_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        let (log, stats) = file_log(&path, Duration::from_millis(50));
        line(&log, "before");
        log.flush();
        std::fs::rename(&path, &rotated).unwrap();
        assert!(
            eventually(|| stats.reopened.get() == 1),
            "the rename is noticed within `flush`"
        );
        line(&log, "after");
        log.flush();
        assert_eq!(file_ids(&rotated), ["before"]);
        assert_eq!(file_ids(&path), ["after"]);

        std::fs::remove_file(&path).unwrap();
        assert!(eventually(|| stats.reopened.get() == 2));
        line(&log, "recreated");
        log.flush();
        assert_eq!(file_ids(&path), ["recreated"]);
    }

    #[test]
    fn reopen_takes_effect_before_the_next_line_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let rotated = dir.path().join("access.log.1");
        // No tick within the test: only `reopen` (SIGUSR1's doing) can move the log.
        let (log, stats) = file_log(&path, Duration::from_secs(3600));
        line(&log, "before");
        log.flush();
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        line(&log, "after");
        log.flush();
        assert_eq!(stats.reopened.get(), 1);
        assert_eq!(file_ids(&rotated), ["before"]);
        assert_eq!(file_ids(&path), ["after"]);
    }
}
