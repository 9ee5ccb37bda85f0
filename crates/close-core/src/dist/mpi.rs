//! [`Mpi`]: the [`Collective`] over the system's MPI library (rsmpi), on host buffers.
//!
//! A failing MPI call ends the job (MPI's default error handler), and so does a rank that
//! dies: `mpirun` (or `srun --kill-on-bad-exit`) then stops the others, so no rank waits
//! for a dead one.

use ::mpi::collective::SystemOperation;
use ::mpi::environment::{Threading, Universe};
use ::mpi::topology::{Communicator, SimpleCommunicator};
use ::mpi::traits::*;
use candle_core::{DType, Tensor};

use super::Collective;
use crate::{Error, Result};

/// MPI's `MPI_COMM_WORLD`, initialized once per process; finalized when dropped.
pub struct Mpi {
    // Declared before `_universe` so that it is released before MPI_Finalize runs.
    world: SimpleCommunicator,
    local_rank: usize,
    _universe: Universe,
}

/// Elements per MPI call: counts are C ints.
const CHUNK: usize = 1 << 30;

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
