//! Runs test cases in worker processes, so that a panic, an abort or a hang is pinned to
//! the case that caused it and the other cases still run: the rank and arity sweep
//! (`crate::sweep`) and the deterministic fuzz pass (`cargo xtask fuzz --ci`) use it. A
//! worker is called with a range of case indices and prints one report line per case.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How one case fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran to its end; the worker's one word for how far it got (`Compiled`,
    /// `ImportError`: errors are fine outcomes).
    Finished(String),
    /// A panic, with its message.
    Panicked(String),
    /// The worker died on it (an abort, a signal, a stack overflow).
    Crashed(String),
    /// It ran past the hang limit.
    Hung,
}

impl Outcome {
    /// Whether the outcome is a fault of smelt's (a panic, crash or hang).
    pub fn is_fault(&self) -> bool {
        !matches!(self, Outcome::Finished(_))
    }

    /// The worker's line for a case: `<index>\t<word>[\t<message>]`.
    pub fn to_line(&self, index: usize) -> String {
        match self {
            Outcome::Finished(word) => format!("{index}\t{word}"),
            Outcome::Panicked(m) => format!("{index}\tPanicked\t{}", m.escape_debug()),
            Outcome::Crashed(m) => format!("{index}\tCrashed\t{}", m.escape_debug()),
            Outcome::Hung => format!("{index}\tHung"),
        }
    }

    /// Parses a worker's line; returns the case index and outcome (a message stays escaped).
    pub fn from_line(line: &str) -> Option<(usize, Outcome)> {
        let fields: Vec<&str> = line.splitn(3, '\t').collect();
        let index = fields.first()?.parse().ok()?;
        let message = || fields.get(2).unwrap_or(&"").to_string();
        let outcome = match *fields.get(1)? {
            "Panicked" => Outcome::Panicked(message()),
            "Crashed" => Outcome::Crashed(message()),
            "Hung" => Outcome::Hung,
            "" => return None,
            word => Outcome::Finished(word.to_string()),
        };
        Some((index, outcome))
    }
}

/// The exit status with which a worker asks for a fresh process for the rest of its
/// cases (after a case left its process unusable, as a CUDA fault leaves the context):
/// the cases it has reported stand, and the next one is not marked crashed.
pub const RESTART_STATUS: i32 = 75;

/// How a sweep is run: the worker program and its first arguments (it is called as
/// `worker ARGS... FIRST END` and reports cases FIRST..END one line each), how many
/// workers at once, how many cases each takes at a time, and how long one case may take.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub worker: PathBuf,
    pub args: Vec<String>,
    pub jobs: usize,
    pub block: usize,
    pub hang_limit: Duration,
}

/// Runs cases `0..count` in worker processes; returns each case's outcome. A worker that
/// dies or stops reporting is replaced, and the case it was on is marked crashed or hung.
pub fn run_isolated(iso: &Isolation, count: usize) -> Vec<Outcome> {
    run_isolated_until(iso, count, None)
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Crashed("never reported".into())))
        .collect()
}

/// As [`run_isolated`], starting no block of cases after `deadline`: the cases not run
/// are `None`, so that a run under a time limit keeps what it finished.
pub fn run_isolated_until(
    iso: &Isolation,
    count: usize,
    deadline: Option<Instant>,
) -> Vec<Option<Outcome>> {
    let results = Mutex::new(vec![None; count]);
    let next_block = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..iso.jobs.max(1) {
            s.spawn(|| {
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let first = next_block.fetch_add(iso.block, Ordering::SeqCst);
                    if first >= count {
                        break;
                    }
                    let end = (first + iso.block).min(count);
                    for (i, o) in run_block(iso, first, end) {
                        results.lock().expect("no poisoned results")[i] = Some(o);
                    }
                }
            });
        }
    });
    results.into_inner().expect("no poisoned results")
}

/// The last lines a worker wrote on stderr (where a crash explains itself).
fn drain_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let tail = Arc::new(Mutex::new(String::new()));
    if let Some(mut err) = child.stderr.take() {
        let tail = Arc::clone(&tail);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().expect("no poisoned tail");
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
                if t.len() > 4000 {
                    let cut = t.len() - 2000;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                    t.drain(..cut);
                }
            }
        });
    }
    tail
}

/// What a dead worker's stderr says in one line: its first line (`memory allocation of N
/// bytes failed`) and, from a backtrace, the innermost frame in this workspace.
fn last_words(stderr: &str) -> String {
    let root = crate::workspace_root().display().to_string();
    let first = stderr.lines().map(str::trim).find(|l| !l.is_empty());
    let frame = stderr.lines().find_map(|l| {
        let at = l.trim().strip_prefix("at ")?.strip_prefix(&root)?;
        Some(format!("at {}", at.trim_start_matches('/')))
    });
    [first.map(String::from), frame]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs cases `first..end`, replacing the worker after a crash or hang.
fn run_block(iso: &Isolation, first: usize, end: usize) -> Vec<(usize, Outcome)> {
    let mut out = Vec::new();
    let mut next = first;
    while next < end {
        let spawned = Command::new(&iso.worker)
            .args(&iso.args)
            .arg(next.to_string())
            .arg(end.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                out.push((
                    next,
                    Outcome::Crashed(format!("cannot start the worker: {e}")),
                ));
                next += 1;
                continue;
            }
        };
        let stderr = drain_stderr(&mut child);
        let (tx, rx) = channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            match rx.recv_timeout(iso.hang_limit) {
                Ok(line) => match Outcome::from_line(&line) {
                    Some((i, o)) if i == next => {
                        out.push((i, o));
                        next += 1;
                    }
                    // Anything else a worker prints is not a report.
                    _ => continue,
                },
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    out.push((next, Outcome::Hung));
                    next += 1;
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    let asked = matches!(&status, Ok(s) if s.code() == Some(RESTART_STATUS));
                    if next < end && !asked {
                        // Give the stderr reader a moment to take the last words.
                        std::thread::sleep(Duration::from_millis(50));
                        let words = stderr.lock().expect("no poisoned tail").clone();
                        let why = match status {
                            Ok(s) => format!("worker exited ({s})"),
                            Err(e) => format!("worker lost ({e})"),
                        };
                        out.push((
                            next,
                            Outcome::Crashed(format!("{why}: {}", last_words(&words))),
                        ));
                        next += 1;
                    }
                    break;
                }
            }
        }
    }
    out
}

/// Where the last panic happened and what it said, as the hook of [`record_panics`] saw it.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the panic hook by one that records the panic for [`outcome_of`] instead of
/// printing it (a worker reports panics on its report line).
pub fn record_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into());
        // A panic inside the standard library (an overflow in `Iterator::product`, say)
        // is placed at the innermost frame of smelt's own code that led to it.
        let place = info
            .location()
            .filter(|l| !l.file().starts_with("/rustc/"))
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .or_else(smelt_frame)
            .map_or(String::new(), |p| format!("{p}: "));
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{place}{message}"));
    }));
}

/// The innermost frame of a backtrace in this workspace's sources (`file:line`).
fn smelt_frame() -> Option<String> {
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    let root = crate::workspace_root().display().to_string();
    trace.lines().find_map(|l| {
        let at = l.trim().strip_prefix("at ")?;
        let rel = at.strip_prefix(&root).or_else(|| at.strip_prefix("./"))?;
        (!rel.ends_with("isolate.rs") && !rel.contains("isolate.rs:"))
            .then(|| rel.trim_start_matches('/').to_string())
    })
}

/// Prints a worker's report line for a case, flushed at once: the parent reads reports as
/// they come, so that the case after the last report is the one a crash or hang is on.
pub fn report(index: usize, outcome: &Outcome) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", outcome.to_line(index));
    let _ = out.flush();
}

/// Runs one case body, catching a panic; what it returns is its one word.
pub fn outcome_of(body: impl FnOnce() -> String + std::panic::UnwindSafe) -> Outcome {
    match std::panic::catch_unwind(body) {
        Ok(word) => Outcome::Finished(word),
        Err(_) => Outcome::Panicked(
            LAST_PANIC
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_else(|| "a panic (no hook recorded it)".into()),
        ),
    }
}
