//! The thread pool that runs kernels: a fixed set of workers (default: the available
//! cores) splits a kernel's outer range `[0, n)` into chunks; the calling thread works
//! too, and `run` returns when every chunk is done.
//!
//! Launches come back to back (a model is a sequence of kernels), so an idle worker spins
//! for a short while before it sleeps, and `run` waits only for workers that are inside a
//! chunk, never for one that has not woken up yet.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The work of one `run`: the range, chunk size, and the body with its lifetime erased.
struct Job {
    body: *const (dyn Fn(std::ops::Range<usize>) + Sync),
    total: usize,
    chunk: usize,
    /// For `run_each`: one contiguous share of the indices per thread, each packed as
    /// `front << 32 | back`. A thread takes single indices from the front of its own
    /// share, then from the back of the others' (see `Job::claim_share`). Empty: fixed
    /// chunks from `next`.
    shares: Vec<AtomicU64>,
    /// Threads that have joined, which gives each its share.
    joined: AtomicUsize,
    next: AtomicUsize,
    /// Workers between announcing themselves and finishing their last chunk.
    in_flight: AtomicUsize,
    panicked: AtomicBool,
}

// SAFETY: `body` points at a `Sync` closure that `run` keeps alive until every chunk is
// claimed and no worker is in flight; a worker that arrives later claims no chunk and so
// never dereferences it (see `Job::work`).
unsafe impl Send for Job {}
unsafe impl Sync for Job {}

impl Job {
    /// The next chunk `[start, end)` for the thread holding share `own`, or `None` when
    /// every index is claimed.
    fn claim(&self, own: usize) -> Option<(usize, usize)> {
        if self.shares.is_empty() {
            let start = self.next.fetch_add(self.chunk, Ordering::SeqCst);
            return (start < self.total).then(|| (start, (start + self.chunk).min(self.total)));
        }
        let n = self.shares.len();
        (0..n).find_map(|k| {
            let share = (own + k) % n;
            self.claim_share(share, k == 0).map(|i| (i, i + 1))
        })
    }

    /// One index of `share`: its front for its owner, its back for the others, so the
    /// owner walks its share in order and a thread that finished early (or a worker
    /// that woke late, or was preempted) leaves only the index it is running to wait
    /// for.
    fn claim_share(&self, share: usize, owner: bool) -> Option<usize> {
        let cell = &self.shares[share];
        let mut now = cell.load(Ordering::SeqCst);
        loop {
            let (front, back) = (now >> 32, now & u64::from(u32::MAX));
            if front >= back {
                return None;
            }
            let (taken, next) = if owner {
                (front, (front + 1) << 32 | back)
            } else {
                (back - 1, front << 32 | (back - 1))
            };
            match cell.compare_exchange(now, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(taken as usize),
                Err(seen) => now = seen,
            }
        }
    }

    /// Claims and runs chunks until none are left.
    fn work(&self) {
        // Announce before claiming: once `run` has seen every chunk claimed and nobody in
        // flight, any later claim (sequentially consistent) finds the range exhausted.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let own = self.joined.fetch_add(1, Ordering::SeqCst);
        while let Some((start, end)) = self.claim(own) {
            // SAFETY: see `unsafe impl Sync for Job`: the closure outlives the claim.
            let body = unsafe { &*self.body };
            if catch_unwind(AssertUnwindSafe(|| body(start..end))).is_err() {
                self.panicked.store(true, Ordering::SeqCst);
                // Nothing more to claim, for anyone.
                self.next.store(self.total, Ordering::SeqCst);
                for share in &self.shares {
                    share.store(0, Ordering::SeqCst);
                }
                break;
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spin iterations an idle worker polls for the next job before sleeping (tens of
/// microseconds), and `run` polls for workers still in a chunk before yielding.
const SPIN: u32 = 1 << 15;

#[derive(Default)]
struct State {
    job: Option<Arc<Job>>,
    generation: u64,
    shutdown: bool,
    /// Workers waiting on `wake`: `run` wakes them only when there are some, since
    /// back-to-back launches find the workers still spinning, and the wake-up is a
    /// system call each time.
    sleepers: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// `state.generation`, readable without the lock by spinning workers.
    published: AtomicU64,
}

/// A fixed pool of worker threads.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls from several threads.
    running: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadPool({} threads)", self.threads())
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller counts as one); 0 means the available cores.
    pub fn new(threads: usize) -> ThreadPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            published: AtomicU64::new(0),
        });
        let workers = (1..threads)
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("smelt-worker-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// Threads that work on a `run`, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `body` over `[0, total)` in chunks of at least `min_chunk`, on every thread,
    /// and returns when all chunks are done. A panic in `body` is re-raised here.
    pub fn run(
        &self,
        total: usize,
        min_chunk: usize,
        body: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) {
        let chunk = total.div_ceil(self.threads() * 4).max(min_chunk.max(1));
        self.run_in_chunks(total, chunk, false, body);
    }

    /// Runs `body` over `[0, total)` one index at a time: each thread takes its own
    /// contiguous share in order (keeping neighbouring items and their shared inputs in
    /// its cache), then steals single indices from the back of the others' shares. For
    /// work items long enough that the threads should finish within one item of each
    /// other (a convolution's tiles), where `run`'s fixed chunks leave one thread a
    /// chunk behind, and where a worker that wakes late or is preempted by another
    /// process holds up only the item it is in.
    pub fn run_each(&self, total: usize, body: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let shared = total < u32::MAX as usize && self.threads() > 1;
        self.run_in_chunks(total, 1, shared, body);
    }

    fn run_in_chunks(
        &self,
        total: usize,
        chunk: usize,
        shared: bool,
        body: &(dyn Fn(std::ops::Range<usize>) + Sync),
    ) {
        if total == 0 {
            return;
        }
        if self.workers.is_empty() || chunk >= total {
            body(0..total);
            return;
        }
        let _serial = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the erased reference is only used while this call waits below.
        let body: *const (dyn Fn(std::ops::Range<usize>) + Sync) =
            unsafe { std::mem::transmute(body) };
        let threads = self.threads();
        let shares = if shared {
            (0..threads)
                .map(|t| {
                    let (front, back) = (total * t / threads, total * (t + 1) / threads);
                    AtomicU64::new((front as u64) << 32 | back as u64)
                })
                .collect()
        } else {
            Vec::new()
        };
        let job = Arc::new(Job {
            body,
            total,
            chunk,
            shares,
            joined: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let sleepers = {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.job = Some(job.clone());
            st.generation += 1;
            self.shared.published.store(st.generation, Ordering::SeqCst);
            // Read under the lock: a worker counts itself in under it before it waits,
            // and one that comes later sees the new generation instead of waiting.
            st.sleepers
        };
        if sleepers > 0 {
            self.shared.wake.notify_all();
        }
        job.work();
        // Every chunk is claimed now; wait for the workers still running one.
        let mut spins = 0u32;
        while job.in_flight.load(Ordering::SeqCst) > 0 {
            if spins < SPIN {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if job.panicked.load(Ordering::SeqCst) {
            panic!("a kernel panicked on a worker thread");
        }
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        // Poll briefly: the next launch usually follows within microseconds.
        for _ in 0..SPIN {
            if shared.published.load(Ordering::SeqCst) != seen {
                break;
            }
            std::hint::spin_loop();
        }
        let job = {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while !st.shutdown && st.generation == seen {
                st.sleepers += 1;
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                st.sleepers -= 1;
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            st.job.clone()
        };
        if let Some(job) = job {
            job.work();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown = true;
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_index_runs_exactly_once() {
        for threads in [1, 2, 3, 8] {
            let pool = ThreadPool::new(threads);
            for total in [0, 1, 7, 1000, 100_003] {
                for guided in [false, true] {
                    let hits: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
                    let body = |r: std::ops::Range<usize>| {
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    };
                    if guided {
                        pool.run_each(total, &body);
                    } else {
                        pool.run(total, 1, &body);
                    }
                    assert!(
                        hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                        "threads {threads}, total {total}, guided {guided}"
                    );
                }
            }
        }
    }

    /// A thread that finishes its share takes the rest of a slow thread's share, from
    /// the back: the thread held up in index 0 runs that index only.
    #[test]
    fn shares_are_taken_over_from_a_slow_thread() {
        let pool = ThreadPool::new(2);
        let total = 64;
        let by: Vec<AtomicU64> = (0..total).map(|_| AtomicU64::new(0)).collect();
        pool.run_each(total, &|r| {
            for i in r {
                let id = if std::thread::current().name() == Some("smelt-worker-1") {
                    2
                } else {
                    1
                };
                if i == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                by[i].store(id, Ordering::SeqCst);
            }
        });
        let ids: Vec<u64> = by.iter().map(|b| b.load(Ordering::SeqCst)).collect();
        assert!(ids.iter().all(|&id| id == 1 || id == 2), "{ids:?}");
        let slow = ids.iter().filter(|&&id| id == ids[0]).count();
        assert_eq!(slow, 1, "{ids:?}");
    }

    #[test]
    fn runs_from_several_threads_at_once() {
        let pool = Arc::new(ThreadPool::new(3));
        std::thread::scope(|s| {
            for t in 0..8u64 {
                let pool = pool.clone();
                s.spawn(move || {
                    for _ in 0..50 {
                        let sum = AtomicU64::new(0);
                        pool.run(1000, 10, &|r| {
                            sum.fetch_add(r.map(|i| i as u64 * t).sum(), Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), t * 999 * 1000 / 2);
                    }
                });
            }
        });
    }

    #[test]
    fn a_panicking_body_is_reported_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(100, 1, &|r| assert!(!r.contains(&57), "bad index"))
        }));
        assert!(r.is_err());
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run_each(100, &|r| assert!(!r.contains(&57), "bad index"))
        }));
        assert!(r.is_err());
        let sum = AtomicU64::new(0);
        pool.run(100, 1, &|r| {
            sum.fetch_add(r.len() as u64, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 100);
    }
}
