//! The machine's physical limits: fp32 FMA throughput (one core, all cores) and memory
//! bandwidth, measured here so that benchmark results can be read as a share of them.

use std::time::Instant;

/// What `measure` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// The widest FMA the CPU has: "avx512", "avx2+fma", or "none".
    pub isa: &'static str,
    pub gflops_one_core: f64,
    pub gflops_all_cores: f64,
    pub cores: usize,
    /// Copy bandwidth (bytes read plus bytes written per second), in GB/s.
    pub copy_gbs: f64,
}

impl Peak {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"isa\": {:?}, \"gflops_one_core\": {:.1}, \"gflops_all_cores\": {:.1}, \"cores\": {}, \"copy_gbs\": {:.1}}}",
            self.isa, self.gflops_one_core, self.gflops_all_cores, self.cores, self.copy_gbs
        )
    }
}

/// Iterations of the FMA kernel per timing.
const FMA_ITERS: u64 = 20_000_000;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: u64) -> (f32, u64) {
    use std::arch::x86_64::*;
    // Twelve independent accumulators hide the FMA latency on two ports.
    let mut acc = [_mm256_set1_ps(0.0); 12];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut sum = _mm256_setzero_ps();
    for x in acc {
        sum = _mm256_add_ps(sum, x);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds eight f32.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    (out.iter().sum(), iters * 12 * 8 * 2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: u64) -> (f32, u64) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 12];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut total = 0f32;
    for x in acc {
        total += _mm512_reduce_add_ps(x);
    }
    (total, iters * 12 * 16 * 2)
}

/// FLOPs per second of the widest FMA on this thread; the result keeps the work alive.
fn fma_rate(isa: &str) -> f64 {
    let run = |iters: u64| -> (f32, u64) {
        #[cfg(target_arch = "x86_64")]
        {
            match isa {
                // SAFETY: the caller picked the ISA from runtime detection.
                "avx512" => unsafe { fma_avx512(iters) },
                "avx2+fma" => unsafe { fma_avx2(iters) },
                _ => (0.0, 0),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = iters;
            (0.0, 0)
        }
    };
    let mut best = 0f64;
    for _ in 0..3 {
        let start = Instant::now();
        let (keep, flops) = run(FMA_ITERS);
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(keep);
        best = best.max(flops as f64 / secs);
    }
    best
}

fn isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
    }
    "none"
}

/// Copy bandwidth over buffers far larger than the caches.
fn copy_rate() -> f64 {
    let n = 64 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        dst.copy_from_slice(&src);
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(&dst);
        best = best.max(2.0 * n as f64 / secs);
    }
    best
}

/// Measures the machine (a few seconds).
pub fn measure() -> Peak {
    let isa = isa();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let one = fma_rate(isa);
    let all: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores).map(|_| s.spawn(|| fma_rate(isa))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    Peak {
        isa,
        gflops_one_core: one / 1e9,
        gflops_all_cores: all / 1e9,
        cores,
        copy_gbs: copy_rate() / 1e9,
    }
}
