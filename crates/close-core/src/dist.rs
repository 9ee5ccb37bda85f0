//! Data-parallel training across processes.
//!
//! `mpirun -np N close train …` (or `srun`) starts N copies of the same run. Each rank
//! computes the gradient of its slice of every batch; the gradients are summed over the
//! ranks before AdamW, so every rank takes the same step and the weights stay identical.
//!
//! - [`Collective`]: the operations the trainer needs, with three implementations:
//!   [`Local`] (one process, all no-ops), `mpi::Mpi` (feature `mpi`: rsmpi over the
//!   system's MPI, host buffers) and `nccl::Nccl` (feature `nccl`: GPU buffers through
//!   NCCL, bootstrapped over MPI).
//! - [`all_reduce_grads`]: a step's gradients and loss summed in one all-reduce.
//! - [`connect`]: the collective for this process, from the launcher's environment.
//! - [`check_same`]: every rank must hold the same value (weights' fingerprint, counters);
//!   otherwise a clear error instead of silently diverging ranks.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::device::DeviceSpec;
use crate::{Error, Result};

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

/// The collective operations of data-parallel training. Every rank must make the same
/// calls in the same order (as with MPI itself).
pub trait Collective {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// The element-wise sum over all ranks of a 1-D f32 tensor; every rank gets it.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// Every rank's `value`, in rank order.
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>>;
    /// Returns once every rank has reached it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank's process with `code`. A rank that fails calls this, so that the
    /// others do not wait forever in their next collective.
    fn abort(&self, code: i32) -> !;
    /// Whether this rank writes the run's files (checkpoints, logs, results).
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
    /// Sum `grads` (of `vars`, in an order every rank shares) and the scalar `loss` over
    /// all ranks; see [`all_reduce_grads`], which calls this. The default packs everything
    /// into one tensor for [`Collective::all_reduce_sum`].
    fn sum_grads(&self, vars: &[Var], grads: &mut GradStore, loss: &Tensor) -> Result<Tensor> {
        let packed = pack(vars, grads, loss)?;
        let sum = self.all_reduce_sum(&packed.buffer)?;
        unpack(&sum, vars, grads, packed.all_present)
    }
}

/// One process: nothing to communicate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        Ok(vec![value])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// The one [`Local`] collective, for callers that need a `&'static dyn Collective`.
pub static LOCAL: Local = Local;

/// The rows `[lo, hi)` of a batch of `n` that `rank` of `size` takes: contiguous slices
/// whose lengths differ by at most one (a rank may get none of a short last batch).
pub fn rank_rows(n: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (n * rank / size)..(n * (rank + 1) / size)
}

/// Sum `grads` (of `vars`, in an order every rank shares) and the scalar `loss` over all
/// ranks, in one all-reduce; returns the summed loss. Afterwards every rank's `grads`
/// holds f32 sums, and a variable has a gradient when any rank gave it one.
///
/// Each rank's loss must already be its share of the batch's loss (its sum over the
/// batch's whole count, say), so that the sums are the batch's loss and gradient.
pub fn all_reduce_grads(
    c: &dyn Collective,
    vars: &[Var],
    grads: &mut GradStore,
    loss: &Tensor,
) -> Result<Tensor> {
    if c.size() == 1 {
        return Ok(loss.clone());
    }
    c.sum_grads(vars, grads, loss)
}

/// One rank's share of an all-reduce: `[every gradient, flattened (zeros where absent);
/// one presence flag per variable; the loss]`, in f32.
struct Packed {
    buffer: Tensor,
    /// Whether this rank has every variable's gradient.
    all_present: bool,
}

fn pack(vars: &[Var], grads: &GradStore, loss: &Tensor) -> Result<Packed> {
    let device = loss.device();
    let mut parts = Vec::with_capacity(vars.len() + 2);
    let mut present = Vec::with_capacity(vars.len());
    for v in vars {
        let g = grads.get(v.as_tensor());
        parts.push(match g {
            Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
            None => Tensor::zeros(v.elem_count(), DType::F32, device)?,
        });
        present.push(g.is_some() as u8 as f32);
    }
    let all_present = present.iter().all(|&p| p == 1.0);
    parts.push(Tensor::from_vec(present, vars.len(), device)?);
    parts.push(loss.to_dtype(DType::F32)?.reshape(1)?);
    Ok(Packed {
        buffer: Tensor::cat(&parts, 0)?,
        all_present,
    })
}

/// Puts the summed gradients of `sum` (laid out as by [`pack`]) into `grads`; returns the
/// summed loss.
fn unpack(sum: &Tensor, vars: &[Var], grads: &mut GradStore, all_present: bool) -> Result<Tensor> {
    let total: usize = vars.iter().map(|v| v.elem_count()).sum();
    // When this rank has every gradient, so has the sum; only otherwise are the presence
    // counts read (on a GPU, a read to the host).
    let present = match all_present {
        true => vec![1f32; vars.len()],
        false => sum.narrow(0, total, vars.len())?.to_vec1::<f32>()?,
    };
    let mut offset = 0;
    for (v, p) in vars.iter().zip(present) {
        let n = v.elem_count();
        if p > 0.0 {
            let g = sum.narrow(0, offset, n)?.reshape(v.shape())?;
            grads.insert(v.as_tensor(), g);
        } else {
            grads.remove(v.as_tensor());
        }
        offset += n;
    }
    Ok(sum.narrow(0, total + vars.len(), 1)?.reshape(())?)
}

/// Fails unless every rank passed the same `value`; `what` names it in the message.
pub fn check_same(c: &dyn Collective, what: &str, value: u64) -> Result<()> {
    let all = c.all_gather_u64(value)?;
    match all.iter().position(|&v| v != all[0]) {
        None => Ok(()),
        Some(r) => Err(Error::invalid(format!(
            "data-parallel ranks disagree: rank {r}'s {what} differs from rank 0's. Every \
             rank must read the same data, caches and config, and see the same --out (a \
             filesystem shared by all machines)"
        ))),
    }
}

/// A 64-bit digest of `bytes` (configs, for [`check_same`]).
pub fn digest(bytes: &[u8]) -> u64 {
    use sha2::{Digest, Sha256};
    first_u64(&Sha256::digest(bytes))
}

/// A fingerprint of variables' values (shapes and bytes, in order), for [`check_same`].
pub fn fingerprint(vars: &[Var]) -> Result<u64> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for v in vars {
        for d in v.dims() {
            h.update((*d as u64).to_le_bytes());
        }
        let t = v.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
        // One update per variable: per value, the hasher's call overhead would dominate.
        let bytes: Vec<u8> = t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        h.update(&bytes);
    }
    Ok(first_u64(&h.finalize()))
}

/// The first 8 bytes of a digest as a little-endian `u64`.
fn first_u64(d: &[u8]) -> u64 {
    u64::from_le_bytes(d[..8].try_into().expect("a digest has at least 8 bytes"))
}

/// Which implementation sums the gradients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backend {
    /// NCCL on GPUs (when built with the `nccl` feature), MPI otherwise.
    #[default]
    Auto,
    /// MPI, through host memory (any device).
    Mpi,
    /// NCCL, on GPU memory (the `nccl` feature and a CUDA device).
    Nccl,
}

/// Environment variables in which launchers give the number of processes: Open MPI,
/// PMI (MPICH, Intel MPI, Slurm's `srun --mpi=pmi2`), MVAPICH, and Slurm job steps.
const SIZE_VARS: [&str; 4] = [
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "MV2_COMM_WORLD_SIZE",
    "SLURM_STEP_NUM_TASKS",
];

/// The number of processes a launcher started with this one, and the variable that says
/// so; `None` when not launched as several.
pub fn launched_size() -> Option<(usize, &'static str)> {
    SIZE_VARS.iter().find_map(|&k| {
        let n: usize = std::env::var(k).ok()?.trim().parse().ok()?;
        (n > 1).then_some((n, k))
    })
}

/// The collective for this process and the device it computes on: [`Local`] and `device`
/// unless a launcher started several processes; then MPI (or NCCL, see [`Backend`]), and
/// on GPUs the device `cuda:N + local rank`, so that each rank of a machine has its own.
pub fn connect(backend: Backend, device: DeviceSpec) -> Result<(Box<dyn Collective>, DeviceSpec)> {
    let Some((n, var)) = launched_size() else {
        return match backend {
            Backend::Auto => Ok((Box::new(Local), device)),
            _ => Err(Error::config(
                "all-reduce",
                "this process was not started by an MPI launcher: run it as `mpirun -np N \
                 close train …` (or srun), or leave out --all-reduce",
            )),
        };
    };
    connect_launched(backend, device, (n, var))
}

#[cfg(feature = "mpi")]
fn connect_launched(
    backend: Backend,
    device: DeviceSpec,
    _: (usize, &str),
) -> Result<(Box<dyn Collective>, DeviceSpec)> {
    let world = mpi::Mpi::init()?;
    let device = match device {
        DeviceSpec::Cpu => DeviceSpec::Cpu,
        DeviceSpec::Cuda(n) => DeviceSpec::Cuda(n + world.local_rank()),
    };
    let nccl = match (backend, device) {
        (Backend::Mpi, _) => false,
        (Backend::Nccl, DeviceSpec::Cpu) => {
            return Err(Error::config("all-reduce", "nccl needs --device cuda"))
        }
        (Backend::Nccl, _) => true,
        (Backend::Auto, d) => cfg!(feature = "nccl") && d != DeviceSpec::Cpu,
    };
    if !nccl {
        return Ok((Box::new(world), device));
    }
    nccl_collective(world, device)
}

#[cfg(feature = "nccl")]
fn nccl_collective(
    world: mpi::Mpi,
    device: DeviceSpec,
) -> Result<(Box<dyn Collective>, DeviceSpec)> {
    let dev = device.open()?;
    Ok((Box::new(nccl::Nccl::new(world, &dev)?), device))
}

#[cfg(all(feature = "mpi", not(feature = "nccl")))]
fn nccl_collective(_: mpi::Mpi, _: DeviceSpec) -> Result<(Box<dyn Collective>, DeviceSpec)> {
    Err(Error::config(
        "all-reduce",
        "this build has no NCCL: rebuild with `cargo build --release --features nccl`, or \
         pass --all-reduce mpi",
    ))
}

#[cfg(not(feature = "mpi"))]
fn connect_launched(
    _: Backend,
    _: DeviceSpec,
    (n, var): (usize, &str),
) -> Result<(Box<dyn Collective>, DeviceSpec)> {
    Err(Error::config(
        "launch",
        format!(
            "started as one of {n} processes ({var}={n}), but this build of close has no \
             data-parallel training: rebuild with `cargo build --release --features mpi` \
             (or `--features nccl` for GPUs)"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two ranks simulated in one process: the all-reduce adds the other rank's packed
    /// buffer, given up front.
    struct Pair {
        rank: usize,
        other: Tensor,
    }

    impl Collective for Pair {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
            Ok((t + &self.other)?)
        }
        fn all_gather_u64(&self, v: u64) -> Result<Vec<u64>> {
            Ok(vec![v, v + self.rank as u64])
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
    }

    #[test]
    fn rows_cover_the_batch_once() {
        for n in 0..20 {
            for size in 1..5 {
                let rows: Vec<usize> = (0..size).flat_map(|r| rank_rows(n, r, size)).collect();
                assert_eq!(rows, (0..n).collect::<Vec<_>>());
            }
        }
    }

    /// Gradients of two half-batches, each loss divided by the whole batch's count, sum to
    /// the whole batch's gradient; a variable without a gradient on one rank gets the
    /// other's, and one without on both gets none.
    #[test]
    fn summed_half_batch_gradients_are_the_batch_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![0.5f32, -1.0, 2.0], 3, &dev)?;
        let u = Var::from_vec(vec![1.0f32], 1, &dev)?;
        let unused = Var::from_vec(vec![3.0f32], 1, &dev)?;
        let vars = [w.clone(), u.clone(), unused.clone()];
        let x = Tensor::new(
            &[[1f32, 2., 3.], [0., 1., -1.], [2., 0., 1.], [1., 1., 1.]],
            &dev,
        )?;
        let loss_of = |rows: std::ops::Range<usize>, with_u: bool| -> Result<Tensor> {
            let xs = x.narrow(0, rows.start, rows.len())?;
            let mut y = xs.broadcast_mul(&w.as_tensor().unsqueeze(0)?)?.sum_all()?;
            if with_u {
                y = (y + u.as_tensor().sum_all()?.sqr()?)?;
            }
            Ok((y.sqr()? / 4.0)?)
        };
        let full = ((loss_of(0..2, true)? + loss_of(2..4, false)?)?).backward()?;
        let (l0, l1) = (loss_of(0..2, true)?, loss_of(2..4, false)?);
        let (mut g0, mut g1) = (l0.backward()?, l1.backward()?);
        let p0 = pack(&vars, &g0, &l0)?.buffer;
        let p1 = pack(&vars, &g1, &l1)?.buffer;
        let r0 = all_reduce_grads(&Pair { rank: 0, other: p1 }, &vars, &mut g0, &l0)?;
        let r1 = all_reduce_grads(&Pair { rank: 1, other: p0 }, &vars, &mut g1, &l1)?;
        let want_loss = (l0.to_scalar::<f32>()? + l1.to_scalar::<f32>()?) as f64;
        for (g, r) in [(&g0, &r0), (&g1, &r1)] {
            assert!((r.to_scalar::<f32>()? as f64 - want_loss).abs() < 1e-5);
            for v in [&w, &u] {
                let (a, b) = (
                    g.get(v.as_tensor()).unwrap(),
                    full.get(v.as_tensor()).unwrap(),
                );
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-5, "{d}");
            }
            assert!(g.get(unused.as_tensor()).is_none());
        }
        Ok(())
    }

    #[test]
    fn check_same_names_the_rank_that_differs() {
        assert!(check_same(&LOCAL, "weights", 7).is_ok());
        let c = Pair {
            rank: 1,
            other: Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        };
        let e = check_same(&c, "weights", 7).unwrap_err().to_string();
        assert!(e.contains("rank 1's weights differs"), "{e}");
    }
}
