//! Small dense linear algebra in f64 for fitting the modality-gap adapters: means,
//! covariances, Gram matrices, Cholesky factorisation and triangular solves.
//!
//! Matrices are row-major `Vec<f64>` with explicit dimensions ([`Mat`]). Sizes here are at
//! most a few thousand (CLIP dims), so straightforward O(n³) algorithms parallelised over
//! rows with rayon are fast enough (a 768×768 Cholesky takes well under a second).

use rayon::prelude::*;

use close_core::{Error, Result};

/// A dense row-major f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    /// Build from rows of equal length (f32 embeddings are widened to f64).
    pub fn from_rows<R: AsRef<[f32]>>(rows: &[R]) -> Result<Self> {
        let cols = rows.first().map(|r| r.as_ref().len()).unwrap_or(0);
        let mut data = Vec::with_capacity(rows.len() * cols);
        for (i, r) in rows.iter().enumerate() {
            let r = r.as_ref();
            if r.len() != cols {
                return Err(Error::Shape {
                    what: format!("row {i}"),
                    expected: vec![cols],
                    got: vec![r.len()],
                });
            }
            data.extend(r.iter().map(|&v| v as f64));
        }
        Ok(Self {
            rows: rows.len(),
            cols,
            data,
        })
    }

    #[inline]
    pub fn get(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    #[inline]
    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn transpose(&self) -> Mat {
        let mut t = Mat::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        t
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Mat) -> Result<Mat> {
        if self.cols != other.rows {
            return Err(Error::Shape {
                what: "matmul".into(),
                expected: vec![self.cols],
                got: vec![other.rows],
            });
        }
        let (n, k, m) = (self.rows, self.cols, other.cols);
        let mut out = Mat::zeros(n, m);
        out.data
            .par_chunks_mut(m)
            .enumerate()
            .for_each(|(i, orow)| {
                for p in 0..k {
                    let a = self.data[i * k + p];
                    if a == 0.0 {
                        continue;
                    }
                    let brow = &other.data[p * m..(p + 1) * m];
                    for (o, b) in orow.iter_mut().zip(brow) {
                        *o += a * b;
                    }
                }
            });
        Ok(out)
    }

    /// Column means.
    pub fn col_mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.cols];
        for r in 0..self.rows {
            for (a, b) in m.iter_mut().zip(self.row(r)) {
                *a += b;
            }
        }
        let n = self.rows.max(1) as f64;
        m.iter_mut().for_each(|v| *v /= n);
        m
    }

    /// Subtract `mean` from every row.
    pub fn centered(&self, mean: &[f64]) -> Mat {
        let mut out = self.clone();
        out.data.par_chunks_mut(self.cols).for_each(|row| {
            for (a, b) in row.iter_mut().zip(mean) {
                *a -= b;
            }
        });
        out
    }

    /// `selfᵀ · other` without forming the transpose (Gram / cross-covariance).
    pub fn t_matmul(&self, other: &Mat) -> Result<Mat> {
        if self.rows != other.rows {
            return Err(Error::Shape {
                what: "t_matmul".into(),
                expected: vec![self.rows],
                got: vec![other.rows],
            });
        }
        let (k, m) = (self.cols, other.cols);
        let mut out = Mat::zeros(k, m);
        out.data
            .par_chunks_mut(m)
            .enumerate()
            .for_each(|(i, orow)| {
                for r in 0..self.rows {
                    let a = self.data[r * k + i];
                    if a == 0.0 {
                        continue;
                    }
                    let brow = &other.data[r * m..(r + 1) * m];
                    for (o, b) in orow.iter_mut().zip(brow) {
                        *o += a * b;
                    }
                }
            });
        Ok(out)
    }

    /// Sample covariance of the rows (divisor n − 1, as `numpy.cov`), and the mean.
    pub fn covariance(&self) -> Result<(Vec<f64>, Mat)> {
        if self.rows < 2 {
            return Err(Error::invalid(format!(
                "covariance needs at least 2 vectors, got {}",
                self.rows
            )));
        }
        let mean = self.col_mean();
        let c = self.centered(&mean);
        let mut cov = c.t_matmul(&c)?;
        let d = (self.rows - 1) as f64;
        cov.data.iter_mut().for_each(|v| *v /= d);
        Ok((mean, cov))
    }

    /// Lower-triangular Cholesky factor `L` with `L Lᵀ = self` (symmetric positive definite).
    pub fn cholesky(&self) -> Result<Mat> {
        let n = self.rows;
        if self.cols != n {
            return Err(Error::Shape {
                what: "cholesky".into(),
                expected: vec![n, n],
                got: vec![self.rows, self.cols],
            });
        }
        let mut l = Mat::zeros(n, n);
        for j in 0..n {
            let mut d = self.data[j * n + j];
            for k in 0..j {
                d -= l.data[j * n + k] * l.data[j * n + k];
            }
            if !d.is_finite() || d <= 0.0 {
                return Err(Error::invalid(format!(
                    "matrix is not positive definite (pivot {j} = {d:e}); add a ridge / jitter"
                )));
            }
            let djj = d.sqrt();
            l.data[j * n + j] = djj;
            // Column j below the diagonal; rows are independent.
            let (done, rest) = l.data.split_at_mut((j + 1) * n);
            let lj = &done[j * n..j * n + j];
            rest.par_chunks_mut(n).enumerate().for_each(|(off, row)| {
                let i = j + 1 + off;
                let mut s = self.data[i * n + j];
                for k in 0..j {
                    s -= row[k] * lj[k];
                }
                row[j] = s / djj;
            });
        }
        Ok(l)
    }

    /// Solve `A X = B` given the Cholesky factor `L` of `A` (forward then back substitution,
    /// every right-hand column independently).
    // Triangular solves read as the textbook formulas with explicit indices.
    #[allow(clippy::needless_range_loop)]
    pub fn cholesky_solve(l: &Mat, b: &Mat) -> Result<Mat> {
        let n = l.rows;
        if b.rows != n {
            return Err(Error::Shape {
                what: "cholesky_solve".into(),
                expected: vec![n],
                got: vec![b.rows],
            });
        }
        let bt = b.transpose(); // one right-hand side per row
        let mut xt = bt.clone();
        xt.data.par_chunks_mut(n).for_each(|x| {
            for i in 0..n {
                let mut s = x[i];
                for k in 0..i {
                    s -= l.data[i * n + k] * x[k];
                }
                x[i] = s / l.data[i * n + i];
            }
            for i in (0..n).rev() {
                let mut s = x[i];
                for k in i + 1..n {
                    s -= l.data[k * n + i] * x[k];
                }
                x[i] = s / l.data[i * n + i];
            }
        });
        Ok(xt.transpose())
    }

    /// Add `v` to the diagonal.
    pub fn add_diag(&mut self, v: f64) {
        let n = self.rows.min(self.cols);
        for i in 0..n {
            self.data[i * self.cols + i] += v;
        }
    }

    pub fn trace(&self) -> f64 {
        (0..self.rows.min(self.cols))
            .map(|i| self.data[i * self.cols + i])
            .sum()
    }

    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_spd_system() {
        // A = M Mᵀ + I is SPD.
        let m = Mat {
            rows: 3,
            cols: 3,
            data: vec![1., 2., 0., -1., 0.5, 3., 2., 1., 1.],
        };
        let mut a = m.matmul(&m.transpose()).unwrap();
        a.add_diag(1.0);
        let l = a.cholesky().unwrap();
        let llt = l.matmul(&l.transpose()).unwrap();
        for (x, y) in llt.data.iter().zip(&a.data) {
            assert!((x - y).abs() < 1e-12);
        }
        let b = Mat {
            rows: 3,
            cols: 2,
            data: vec![1., 0., 2., 1., -3., 4.],
        };
        let x = Mat::cholesky_solve(&l, &b).unwrap();
        let ax = a.matmul(&x).unwrap();
        for (p, q) in ax.data.iter().zip(&b.data) {
            assert!((p - q).abs() < 1e-10, "{ax:?}");
        }
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let a = Mat {
            rows: 2,
            cols: 2,
            data: vec![1., 2., 2., 1.],
        };
        assert!(a.cholesky().is_err());
    }

    #[test]
    fn covariance_matches_numpy_convention() {
        let x = Mat {
            rows: 3,
            cols: 2,
            data: vec![1., 2., 3., 6., 5., 4.],
        };
        let (mean, cov) = x.covariance().unwrap();
        assert_eq!(mean, vec![3., 4.]);
        // numpy.cov(x.T) = [[4, 2], [2, 4]]
        assert_eq!(cov.data, vec![4., 2., 2., 4.]);
        let g = x.t_matmul(&x).unwrap();
        assert_eq!(g, x.transpose().matmul(&x).unwrap());
    }
}
