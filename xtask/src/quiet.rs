//! Waits for a quiet host before a timed benchmark round.
//!
//! The benchmark host is a shared virtual machine: for minutes at a time one of its cores
//! or its memory bandwidth goes to someone else, and a two-thread model then runs up to
//! twice as slow on whichever runtime happens to be timed (MobileNetV2's five smelt
//! rounds all at 8.7 ms where quiet ones give 4.3). Pairing rounds of the two runtimes
//! cannot help when the noise outlasts all five. Before each round, every core runs the
//! same fixed work (a dependent arithmetic chain and a read of a buffer larger than the
//! cache); while the slowest core takes longer than `SLACK` times the fastest time seen
//! in this run, the round waits, up to `MAX_WAIT`, and the wait is recorded with it.

use std::hint::black_box;
use std::time::{Duration, Instant};

/// How much slower than the quietest probe seen a probe may run and count as quiet.
const SLACK: f64 = 1.10;
/// The longest a round waits for quiet before it runs anyway (and says so).
const MAX_WAIT: Duration = Duration::from_secs(90);
/// The pause between probes while the host is busy.
const PAUSE: Duration = Duration::from_millis(750);
/// Per core: dependent multiply-adds (about 10 ms of one core)...
const CHAIN: u64 = 10_000_000;
/// ... and the elements of a buffer read twice (16 MB, beyond one core's share of cache).
const BUFFER: usize = 2 << 20;

pub struct QuietHost {
    /// One buffer a core.
    buffers: Vec<Vec<u64>>,
    /// The fastest probe of this run, in seconds (its slowest core's time).
    quietest: f64,
}

/// What one [`QuietHost::wait`] saw: the time waited and whether the host went quiet.
pub struct Wait {
    pub seconds: f64,
    pub quiet: bool,
}

impl QuietHost {
    /// Calibrates on five probes.
    pub fn new() -> QuietHost {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let buffers = (0..cores)
            .map(|c| (0..BUFFER as u64).map(|i| i ^ c as u64).collect())
            .collect();
        let mut host = QuietHost {
            buffers,
            quietest: f64::INFINITY,
        };
        for _ in 0..5 {
            host.probe();
        }
        host
    }

    /// Blocks until every core runs the probe within `SLACK` of the quietest time, or
    /// `MAX_WAIT` passes.
    pub fn wait(&mut self) -> Wait {
        let start = Instant::now();
        loop {
            let quiet = self.probe() <= SLACK * self.quietest;
            if quiet || start.elapsed() >= MAX_WAIT {
                return Wait {
                    seconds: start.elapsed().as_secs_f64(),
                    quiet,
                };
            }
            std::thread::sleep(PAUSE);
        }
    }

    /// Runs the fixed work on every core at once; the slowest core's seconds (and the
    /// quietest time updated).
    fn probe(&mut self) -> f64 {
        let took = std::thread::scope(|scope| {
            let runs: Vec<_> = self
                .buffers
                .iter()
                .map(|buffer| scope.spawn(move || work(buffer)))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("the probe does not panic"))
                .fold(0.0, f64::max)
        });
        self.quietest = self.quietest.min(took);
        took
    }
}

/// One core's share of a probe; its seconds.
fn work(buffer: &[u64]) -> f64 {
    let start = Instant::now();
    let mut x = black_box(1.0f64);
    for _ in 0..CHAIN {
        x = x * 1.000_000_1 + 1e-9;
    }
    let mut sum = 0u64;
    for _ in 0..2 {
        sum = buffer.iter().fold(sum, |s, &v| s.wrapping_add(v));
    }
    black_box((x, sum));
    start.elapsed().as_secs_f64()
}
