//! The memory plan: every intermediate buffer gets an offset in one arena, reused once
//! the buffer is dead, so peak memory is far below the sum of all intermediates.

/// A buffer to place: its size and the steps (kernel launches) it is live over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLife {
    pub bytes: usize,
    /// The launch that writes it.
    pub first: usize,
    /// The last launch that reads it (`first` when nothing does).
    pub last: usize,
}

/// Offsets into one arena, one per buffer, and the arena's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaPlan {
    pub offsets: Vec<usize>,
    pub arena_bytes: usize,
    /// What the buffers would take without reuse.
    pub total_bytes: usize,
}

/// Offsets are multiples of this, so vector loads of every buffer are aligned.
pub const ALIGN: usize = 64;

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Places the buffers: largest first, each at the lowest aligned offset that overlaps
/// no already placed buffer whose lifetime intersects its own.
pub fn plan_arena(buffers: &[BufferLife]) -> ArenaPlan {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| buffers[b].bytes.cmp(&buffers[a].bytes).then(a.cmp(&b)));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    let mut arena_bytes = 0;
    for &i in &order {
        let b = buffers[i];
        let size = align(b.bytes.max(1));
        // Intervals taken by live-at-the-same-time buffers, sorted by offset.
        let mut taken: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| buffers[j].first <= b.last && b.first <= buffers[j].last)
            .map(|&j| (offsets[j], offsets[j] + align(buffers[j].bytes.max(1))))
            .collect();
        taken.sort_unstable();
        let mut at = 0;
        for (start, end) in taken {
            if at + size <= start {
                break;
            }
            at = at.max(end);
        }
        offsets[i] = at;
        arena_bytes = arena_bytes.max(at + size);
        placed.push(i);
    }
    ArenaPlan {
        offsets,
        arena_bytes,
        total_bytes: buffers.iter().map(|b| align(b.bytes.max(1))).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(buffers: &[BufferLife], plan: &ArenaPlan) {
        for i in 0..buffers.len() {
            assert_eq!(plan.offsets[i] % ALIGN, 0);
            assert!(plan.offsets[i] + buffers[i].bytes <= plan.arena_bytes);
            for j in 0..i {
                let (a, b) = (buffers[i], buffers[j]);
                let live_together = a.first <= b.last && b.first <= a.last;
                let disjoint = plan.offsets[i] + a.bytes <= plan.offsets[j]
                    || plan.offsets[j] + b.bytes <= plan.offsets[i];
                assert!(
                    !live_together || disjoint || a.bytes == 0 || b.bytes == 0,
                    "buffers {i} and {j} overlap: {buffers:?} {plan:?}"
                );
            }
        }
        assert!(plan.arena_bytes <= plan.total_bytes);
    }

    #[test]
    fn a_chain_reuses_two_slots() {
        // Each buffer is read only by the next launch: two slots suffice.
        let buffers: Vec<BufferLife> = (0..10)
            .map(|i| BufferLife {
                bytes: 1000,
                first: i,
                last: i + 1,
            })
            .collect();
        let plan = plan_arena(&buffers);
        check(&buffers, &plan);
        assert_eq!(plan.arena_bytes, 2 * align(1000));
        assert_eq!(plan.total_bytes, 10 * align(1000));
    }

    #[test]
    fn random_lifetimes_never_overlap() {
        // A small deterministic generator: many mixes of sizes and lifetimes.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        for _ in 0..300 {
            let count = 1 + next(40);
            let buffers: Vec<BufferLife> = (0..count)
                .map(|_| {
                    let first = next(30);
                    BufferLife {
                        bytes: next(5000),
                        first,
                        last: first + next(8),
                    }
                })
                .collect();
            check(&buffers, &plan_arena(&buffers));
        }
    }
}
