//! [`Nccl`]: the [`Collective`] that sums gradients in GPU memory with NCCL. MPI starts
//! the ranks, hands NCCL its unique id and does the small host-side collectives.

use candle_core::cuda_backend::cudarc::nccl::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

use super::mpi::Mpi;
use super::Collective;
use crate::{Error, Result};

/// NCCL for tensors, MPI for the rest.
pub struct Nccl {
    // Declared before `mpi`: the communicator is destroyed before MPI_Finalize.
    comm: Comm,
    mpi: Mpi,
}

impl Nccl {
    /// One NCCL communicator over all MPI ranks, on `device`'s stream (so that the
    /// all-reduce is ordered with candle's kernels on that stream).
    pub fn new(mpi: Mpi, device: &Device) -> Result<Self> {
        let Device::Cuda(cuda) = device else {
            return Err(Error::config("all-reduce", "nccl needs a CUDA device"));
        };
        let nccl_err = |e| Error::invalid(format!("NCCL: {e:?}"));
        let mut bytes = [0u8; 128];
        if mpi.rank() == 0 {
            let id = Id::new().map_err(nccl_err)?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        mpi.broadcast_bytes(&mut bytes);
        let id = Id::uninit(bytes.map(|b| b as _));
        let comm =
            Comm::from_rank(cuda.cuda_stream(), mpi.rank(), mpi.size(), id).map_err(nccl_err)?;
        Ok(Self { comm, mpi })
    }
}

/// The all-reduce as a candle op, so that it reads and writes candle's CUDA buffers.
struct AllReduceSum<'a>(&'a Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce needs a CUDA tensor")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let mut dst = s.device.alloc_zeros::<f32>(end - start)?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::msg(format!("NCCL all-reduce: {e:?}")))?;
        let out = CudaStorage::wrap_cuda_slice(dst, s.device.clone());
        Ok((out, l.shape().clone()))
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
        Ok(t.apply_op1_no_bwd(&AllReduceSum(&self.comm))?)
    }

    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        self.mpi.all_gather_u64(value)
    }

    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
}
