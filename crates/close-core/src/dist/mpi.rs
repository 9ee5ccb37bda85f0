//! [`Mpi`]: the [`Collective`] over the system's MPI library (rsmpi), on host buffers.
//!
//! A failing MPI call ends the job (MPI's default error handler), and so does a rank that
//! dies: `mpirun` (or `srun --kill-on-bad-exit`) then stops the others, so no rank waits
//! for a dead one.

use std::cell::RefCell;

use ::mpi::collective::SystemOperation;
use ::mpi::environment::{Threading, Universe};
use ::mpi::topology::{Communicator, SimpleCommunicator};
use ::mpi::traits::*;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use super::Collective;
use crate::{Error, Result};

/// MPI's `MPI_COMM_WORLD`, initialized once per process; finalized when dropped.
pub struct Mpi {
    // Declared before `_universe` so that it is released before MPI_Finalize runs.
    world: SimpleCommunicator,
    local_rank: usize,
    /// The gradient sum's send and receive buffers, kept from step to step: fresh ones
    /// would be fresh pages for the kernel to zero on every step.
    buffers: RefCell<(Vec<f32>, Vec<f32>)>,
    _universe: Universe,
}

/// Elements per MPI call (16 MiB). Open MPI allocates a temporary buffer of a call's size;
/// at this size glibc keeps reusing one instead of mapping (and zeroing) a new one.
const CHUNK: usize = 1 << 22;

impl Mpi {
    /// Initialize MPI (only the calling thread makes MPI calls).
    pub fn init() -> Result<Self> {
        let (universe, _) = ::mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::invalid("MPI was already initialized in this process"))?;
        let world = universe.world();
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(Self {
            world,
            local_rank,
            buffers: RefCell::default(),
            _universe: universe,
        })
    }

    /// This rank's index among the ranks on its machine (which GPU it takes).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0's `bytes` on every rank (same length on all).
    pub fn broadcast_bytes(&self, bytes: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(bytes);
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let send = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut recv = vec![0f32; send.len()];
        for (s, r) in send.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
            self.world.all_reduce_into(s, r, SystemOperation::sum());
        }
        Ok(Tensor::from_vec(recv, t.dims(), t.device())?)
    }

    /// Packs the gradients straight into the kept host buffer (no packed tensor), sums it,
    /// and makes each variable's gradient from its part of the sum.
    fn sum_grads(&self, vars: &[Var], grads: &mut GradStore, loss: &Tensor) -> Result<Tensor> {
        let mut guard = self.buffers.borrow_mut();
        let (send, recv) = &mut *guard;
        let total: usize = vars.iter().map(|v| v.elem_count()).sum();
        send.resize(total + vars.len() + 1, 0.0);
        recv.resize(send.len(), 0.0);
        let mut offset = 0;
        for (i, v) in vars.iter().enumerate() {
            let part = &mut send[offset..offset + v.elem_count()];
            let g = grads.get(v.as_tensor());
            match g {
                Some(g) => copy_to_host(g, part)?,
                None => part.fill(0.0),
            }
            send[total + i] = g.is_some() as u8 as f32;
            offset += v.elem_count();
        }
        send[total + vars.len()] = copy_scalar(loss)?;
        for (s, r) in send.chunks(CHUNK).zip(recv.chunks_mut(CHUNK)) {
            self.world.all_reduce_into(s, r, SystemOperation::sum());
        }
        let device = loss.device();
        let mut offset = 0;
        for (i, v) in vars.iter().enumerate() {
            let n = v.elem_count();
            if recv[total + i] > 0.0 {
                let g = Tensor::from_slice(&recv[offset..offset + n], v.shape(), device)?;
                grads.insert(v.as_tensor(), g);
            } else {
                grads.remove(v.as_tensor());
            }
            offset += n;
        }
        Ok(Tensor::new(recv[total + vars.len()], device)?)
    }

    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        let mut all = vec![0u64; self.size()];
        self.world.all_gather_into(&value, &mut all[..]);
        Ok(all)
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// Copies a tensor's values (as f32) into `dst`, from any device.
fn copy_to_host(t: &Tensor, dst: &mut [f32]) -> Result<()> {
    let t = match t.device() {
        Device::Cpu => t.clone(),
        _ => t.to_device(&Device::Cpu)?,
    };
    crate::optim::with_host_f32(&t, |src| dst.copy_from_slice(src))
}

fn copy_scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}
