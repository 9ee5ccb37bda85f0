//! f32 matrix products on the CPU: `gemm`'s kernels, with the work split across rayon's
//! threads here rather than inside `gemm`.
//!
//! `gemm` picks its kernels at run time from the CPU's features (AVX-512 when the CPU has
//! it, else AVX2 + FMA). Its own threading divides each product finely, which on the small
//! products of decoding and of narrow layers costs more than it gains. [`matmul`]
//! therefore cuts the output into one block of whole rows or
//! whole columns per thread and runs `gemm` single-threaded on each block. Every output
//! element is computed by the same kernel over the same `k` order whatever the split, so
//! results do not depend on the thread count.
//!
//! Products with few output rows whose operands are both contiguous along `k` (a linear
//! layer's `x wᵀ` while decoding) go to `gemm` in tiles of at most 256 outputs, which it
//! computes with its dot-product kernels. A single large call would first copy (pack) the
//! whole weight for only a handful of rows. With a few dozen rows (batched beams, one
//! image's patches) the same operands go to `gemm` with a column-major output instead,
//! which lets it read the weight in place, and the block is transposed into the row-major
//! output afterwards. `docs/performance.md` has the measurements.

use crate::fused::num_threads;

/// Products below this many multiply-adds run on one thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// `gemm` uses its dot-product kernels, which read both operands in place, for products
/// of at most this many outputs whose operands are contiguous along `k`.
const DOT_TILE: usize = 256;
/// Products with at most this many rows are computed in dot-product tiles.
const DOT_MAX_ROWS: usize = 16;
/// Products with at most this many rows (beyond the dot-product tiles) are computed into
/// column-major blocks of at most `COL_MAJOR_WIDTH` columns.
const COL_MAJOR_MAX_ROWS: usize = 96;
const COL_MAJOR_WIDTH: usize = 2048;

/// A read-only strided matrix: element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// Whether all `rows × cols` elements lie inside `data`.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .zip((cols - 1).checked_mul(self.col_stride))
            .and_then(|(a, b)| a.checked_add(b));
        matches!(last, Some(l) if l < self.data.len())
    }
}

/// The output pointer, shared by the threads that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each thread writes a disjoint block of rows or columns (see `matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The element `offset` places in (a method, so that closures capture the whole
    /// `OutPtr` rather than its raw-pointer field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// How the output is divided among threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    Rows(usize),
    Cols(usize),
}

/// One block per thread along the longer side of the `m × n` output; `None` when the
/// product is too small to be worth more than one thread.
fn split_for(m: usize, n: usize, k: usize, threads: usize) -> Option<Split> {
    let macs = m.saturating_mul(n).saturating_mul(k);
    if threads < 2 || macs < PAR_MIN_MACS {
        return None;
    }
    if m >= n && m >= 2 {
        Some(Split::Rows(m.div_ceil(threads.min(m))))
    } else if n >= 2 {
        Some(Split::Cols(n.div_ceil(threads.min(n))))
    } else {
        None
    }
}

/// `out = lhs · rhs` (or `out += lhs · rhs` when `accumulate`) for `lhs [m, k]`,
/// `rhs [k, n]` and a row-major `out [m, n]`, on the threads of the current rayon pool.
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    out: &mut [f32],
    accumulate: bool,
) -> crate::Result<()> {
    if !lhs.covers(m, k) || !rhs.covers(k, n) || out.len() != m * n {
        return Err(crate::Error::invalid(format!(
            "matmul: operands of {} and {} values and an output of {} do not fit [{m}, {k}] · [{k}, {n}]",
            lhs.data.len(),
            rhs.data.len(),
            out.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            out.fill(0.0);
        }
        return Ok(());
    }
    let dst = OutPtr(out.as_mut_ptr());
    let along_k = lhs.col_stride == 1 && rhs.row_stride == 1;
    if along_k && m <= DOT_MAX_ROWS {
        dot_tiles(dst, (m, n, k), lhs, rhs, accumulate);
        return Ok(());
    }
    if along_k && m <= COL_MAJOR_MAX_ROWS {
        column_major_blocks(dst, (m, n, k), lhs, rhs, accumulate);
        return Ok(());
    }
    match split_for(m, n, k, num_threads()) {
        None => block(dst, (0, m), (0, n), k, lhs, rhs, n, accumulate),
        Some(split) => {
            let (len, size) = match split {
                Split::Rows(size) => (m, size),
                Split::Cols(size) => (n, size),
            };
            rayon::scope(|s| {
                for start in (0..len).step_by(size) {
                    let end = (start + size).min(len);
                    let (rows, cols) = match split {
                        Split::Rows(_) => ((start, end), (0, n)),
                        Split::Cols(_) => ((0, m), (start, end)),
                    };
                    s.spawn(move |_| block(dst, rows, cols, k, lhs, rhs, n, accumulate));
                }
            });
        }
    }
    Ok(())
}

/// The product in tiles of whole rows and `DOT_TILE / m` columns, spread over the pool's
/// threads. The tiles are the same on any number of threads.
fn dot_tiles(
    dst: OutPtr,
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    accumulate: bool,
) {
    use rayon::prelude::*;
    let width = (DOT_TILE / m).max(1);
    let tiles = n.div_ceil(width);
    let tile = |t: usize| {
        let (c0, c1) = (t * width, ((t + 1) * width).min(n));
        block(dst, (0, m), (c0, c1), k, lhs, rhs, n, accumulate);
    };
    if num_threads() < 2 || m * n * k < PAR_MIN_MACS {
        (0..tiles).for_each(tile);
    } else {
        (0..tiles).into_par_iter().for_each(tile);
    }
}

/// The product in blocks of whole columns (at least one per thread, at most
/// `COL_MAJOR_WIDTH` wide), each computed column-major into a scratch buffer and then
/// written into its columns of the row-major output.
fn column_major_blocks(
    dst: OutPtr,
    (m, n, k): (usize, usize, usize),
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    accumulate: bool,
) {
    let threads = if m * n * k < PAR_MIN_MACS {
        1
    } else {
        num_threads().min(n)
    };
    let width = n.div_ceil(threads).min(COL_MAJOR_WIDTH);
    let run = move |c0: usize| {
        let c1 = (c0 + width).min(n);
        let mut scratch = vec![0f32; m * (c1 - c0)];
        // SAFETY: as in `block`; the scratch holds the `m × (c1 - c0)` block column-major.
        unsafe {
            gemm_block(
                scratch.as_mut_ptr(),
                (1, m),
                ((0, m), (c0, c1)),
                k,
                lhs,
                rhs,
                false,
            );
        }
        for i in 0..m {
            // SAFETY: row `i`, columns `[c0, c1)` of the `m × n` output: this thread's block.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.at(i * n + c0), c1 - c0) };
            let col = scratch[i..].iter().step_by(m);
            if accumulate {
                row.iter_mut().zip(col).for_each(|(o, v)| *o += v);
            } else {
                row.iter_mut().zip(col).for_each(|(o, v)| *o = *v);
            }
        }
    };
    if threads == 1 {
        (0..n).step_by(width).for_each(run);
    } else {
        use rayon::prelude::*;
        let starts: Vec<usize> = (0..n).step_by(width).collect();
        starts.into_par_iter().for_each(run);
    }
}

/// The block `rows × cols` of the product, on the calling thread.
#[allow(clippy::too_many_arguments)]
fn block(
    dst: OutPtr,
    (r0, r1): (usize, usize),
    (c0, c1): (usize, usize),
    k: usize,
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    ld: usize,
    accumulate: bool,
) {
    // SAFETY: `matmul` checked that `lhs` covers `[m, k]`, `rhs` covers `[k, n]` and `out`
    // holds `m · n` row-major values; the block `[r0, r1) × [c0, c1)` lies inside them, and
    // the blocks given to different threads are disjoint.
    unsafe {
        let out = dst.at(r0 * ld + c0);
        gemm_block(out, (ld, 1), ((r0, r1), (c0, c1)), k, lhs, rhs, accumulate);
    }
}

/// `out[i, j] (+)= Σ_p lhs[r0 + i, p] · rhs[p, c0 + j]` over the block of rows `[r0, r1)`
/// and columns `[c0, c1)`, single-threaded; `out` points at the block's first element and
/// `out_strides` are its (row, column) strides in elements.
///
/// # Safety
/// The operands must cover the block's rows and columns, and `out` must hold the block at
/// those strides with no other thread writing it.
unsafe fn gemm_block(
    out: *mut f32,
    (out_rs, out_cs): (usize, usize),
    ((r0, r1), (c0, c1)): ((usize, usize), (usize, usize)),
    k: usize,
    lhs: Operand<'_>,
    rhs: Operand<'_>,
    accumulate: bool,
) {
    gemm::gemm(
        r1 - r0,
        c1 - c0,
        k,
        out,
        out_cs as isize,
        out_rs as isize,
        accumulate,
        lhs.data.as_ptr().add(r0 * lhs.row_stride),
        lhs.col_stride as isize,
        lhs.row_stride as isize,
        rhs.data.as_ptr().add(c0 * rhs.col_stride),
        rhs.col_stride as isize,
        rhs.row_stride as isize,
        1.0f32,
        1.0f32,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: Operand, b: Operand) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    out[i * n + j] += a.data[i * a.row_stride + p * a.col_stride] as f64
                        * b.data[p * b.row_stride + j * b.col_stride] as f64;
                }
            }
        }
        out
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
            .map(|v| v as f32 / 500.0 - 1.0)
            .collect()
    }

    /// `a [m, k] · b` for `b` stored `[n, k]` (read transposed, as a linear layer's
    /// weight) or `[k, n]`, added onto 0.5, checked against f64.
    fn check(m: usize, n: usize, k: usize, threads: usize, b_nk: bool) -> Vec<f32> {
        let a = values(m * k, 1);
        let b = values(n * k, 2);
        let lhs = Operand::row_major(&a, k);
        let rhs = if b_nk {
            Operand::transposed(&b, k)
        } else {
            Operand::row_major(&b, n)
        };
        let mut out = vec![0.5f32; m * n];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| matmul((m, n, k), lhs, rhs, &mut out, true).unwrap());
        for (o, e) in out.iter().zip(naive(m, n, k, lhs, rhs)) {
            assert!(
                (*o as f64 - 0.5 - e).abs() < 1e-3,
                "{o} vs {e} for {m}×{n}×{k}"
            );
        }
        out
    }

    #[test]
    fn splits_give_the_same_bits_as_one_thread() {
        for (m, n, k) in [
            (16, 700, 96),
            (17, 700, 96),
            (50, 5000, 40),
            (97, 700, 96),
            (300, 40, 64),
            (40, 600, 2048),
            (300, 64, 1500),
            (1, 1, 5),
            (3, 2000, 200),
        ] {
            for b_nk in [true, false] {
                let one = check(m, n, k, 1, b_nk);
                for threads in [2, 3, 4] {
                    let other = check(m, n, k, threads, b_nk);
                    assert_eq!(one, other, "{m}×{n}×{k} on {threads}");
                }
            }
        }
    }

    #[test]
    fn the_longer_side_is_split() {
        assert_eq!(split_for(16, 512, 512, 2), Some(Split::Cols(256)));
        assert_eq!(split_for(640, 512, 512, 2), Some(Split::Rows(320)));
        assert_eq!(split_for(640, 512, 512, 1), None);
        assert_eq!(split_for(4, 4, 4, 2), None);
    }

    #[test]
    fn operands_that_do_not_fit_are_refused() {
        let a = vec![0f32; 6];
        let mut out = vec![0f32; 4];
        let r = matmul(
            (2, 2, 4),
            Operand::row_major(&a, 4),
            Operand::row_major(&a, 2),
            &mut out,
            false,
        );
        assert!(r.is_err());
    }
}
