"""Scale-out over MPI (mpi4py): EGGROLL and EGD across processes and machines.

Workers exchange fitness values (and, by choice, one gradient all-reduce),
never perturbations: every rank regenerates the noise it needs from its
address ``(seed, name, pair, generation)``.  MPI is the engine (mpi4py, with
any MPI it is built against; ``pip install "egdnp[mpi]"`` brings mpi4py and
MPICH from PyPI).  mpi4py is imported on first use, never by ``import egdnp``;
without it, or under ``mpiexec -n 1``, the same code runs as one process.

Launch
------
::

    mpiexec -n 4 python examples/eggroll_mpi.py

Modules
-------
egdnp.distributed.comm     :class:`Comm` (mpi4py or one process), :func:`world`,
                           :func:`abort_on_error`, per-rank GPU choice, CUDA-aware MPI
egdnp.distributed.eggroll  :class:`DistributedEggroll` (fitness exchange or gradient
                           all-reduce), :func:`partition`, checkpoints on rank 0
egdnp.distributed.egd      data-parallel :func:`average_gradients` / :func:`mean_loss`
                           (EGD's ``loss_reduce``), member-parallel EGD cycles

Example
-------
>>> from egdnp import distributed, es, optim
>>> comm = distributed.world()            # rank, size; one process without MPI
>>> dist = distributed.DistributedEggroll(es.Eggroll(pop_size=64, optimizer=optim.sgd(0.1)), comm)
>>> len(dist.block.members) == 64 // comm.size
True

See docs/distributed.md (launching on a cluster, the two modes, the measured cost model).
"""

from . import comm, egd, eggroll
from .comm import Comm, abort_on_error, cuda_aware, device_index, install_excepthook, select_device, world
from .egd import average_gradients, mean_loss, member_parallel
from .eggroll import MODES, Block, DistributedEggroll, local_view, params_checksum, partition

__all__ = [
    "comm",
    "egd",
    "eggroll",
    "Comm",
    "world",
    "abort_on_error",
    "install_excepthook",
    "device_index",
    "select_device",
    "cuda_aware",
    "average_gradients",
    "mean_loss",
    "member_parallel",
    "MODES",
    "Block",
    "DistributedEggroll",
    "local_view",
    "params_checksum",
    "partition",
]
