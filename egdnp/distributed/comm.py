"""The communicator: MPI through mpi4py, or one process when there is no MPI.

:func:`world` returns a :class:`Comm` around ``mpi4py.MPI.COMM_WORLD`` when
mpi4py can be imported (it is imported here, on first use, never by ``import
egdnp``), and a one-process :class:`Comm` otherwise.  Everything in
:mod:`egdnp.distributed` talks to a :class:`Comm`, so a script runs the same
code path alone (``python script.py``), under ``mpiexec -n 1`` and under
``mpiexec -n 1000``.

Only a handful of collectives are used, each on one contiguous host buffer
(or a device buffer when MPI is CUDA-aware, see :func:`cuda_aware`):
``Allgatherv`` of the fitness vector, ``Allreduce`` of one flat gradient,
``Bcast`` of one float, and pickled ``allgather``/``bcast`` of tiny objects
(checksums, the checkpoint's outcome).  The buffer collectives count the
payload bytes this process sends in :attr:`Comm.bytes_sent`.

Faults: an exception on one rank must not leave the others waiting in a
collective forever.  Run the body of a script inside :func:`abort_on_error`
(or call :func:`install_excepthook`): the failing rank prints its traceback
with its rank and calls ``MPI_Abort``, which ends every process of the job
with a non-zero status.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np  # host-side communication buffers (MPI sends host memory)

from .. import _backend

__all__ = ["Comm", "world", "abort_on_error", "install_excepthook", "device_index", "select_device", "cuda_aware"]


class Comm:
    """A communicator: ``mpi4py`` underneath, or a single process.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm, optional
        The MPI communicator; None for a single process without MPI.

    Attributes
    ----------
    rank : int
        This process's rank in ``[0, size)``.
    size : int
        Number of processes.
    bytes_sent : int
        Payload bytes this process has contributed to collectives so far
        (its block of an all-gather, its buffer of an all-reduce, the root's
        buffer of a broadcast); nothing is sent, and nothing counted, when
        ``size == 1``.
    """

    def __init__(self, mpi_comm: Any = None):
        self.mpi = mpi_comm
        self.rank = 0 if mpi_comm is None else int(mpi_comm.Get_rank())
        self.size = 1 if mpi_comm is None else int(mpi_comm.Get_size())
        self.bytes_sent = 0
        self._local_rank: int | None = None
        self._pools: dict = {}  # page-locked host buffers for device arrays, reused every generation

    def __repr__(self) -> str:
        kind = "single process (no MPI)" if self.mpi is None else "MPI"
        return f"Comm(rank={self.rank}, size={self.size}, {kind})"

    @property
    def is_root(self) -> bool:
        """True on rank 0 (which logs, shows progress and writes checkpoints)."""
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        """Rank among the processes on this machine (MPI's shared-memory split), for choosing a GPU."""
        if self._local_rank is None:
            if self.mpi is None:
                self._local_rank = 0
            else:
                from mpi4py import MPI

                node = self.mpi.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
                self._local_rank = int(node.Get_rank())
                node.Free()
        return self._local_rank

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on rank 0 only (logs and progress lines of a distributed run).

        Parameters
        ----------
        *args, **kwargs :
            As for the built-in ``print``; ``flush`` defaults to True.

        Returns
        -------
        None
        """
        if self.is_root:
            kwargs.setdefault("flush", True)
            print(*args, **kwargs)

    def host_buffer(self, x: Any, key: str) -> np.ndarray:
        """``x`` as contiguous host memory for a collective: page-locked (pinned) for CuPy arrays.

        Parameters
        ----------
        x : array
            Any backend, any shape.
        key : str
            Names a reused buffer (``"fitness"``, ``"gradient"``): a CuPy array
            is copied into the same pinned buffer every time (fast transfers,
            no allocation after the first call).

        Returns
        -------
        numpy.ndarray, shape of ``x``
            A fresh copy for host arrays; the pinned buffer for CuPy (valid
            until the next call with the same ``key``).
        """
        xp = _backend.array_namespace(x)
        if _backend.is_cupy(xp):
            pool = self._pools.setdefault(_backend.backend_name(xp), _backend.BufferPool(xp))
            return _backend.to_host(x, out=pool.get(key, tuple(int(s) for s in x.shape), x.dtype))
        return np.ascontiguousarray(_backend.to_host(x))

    def allgatherv(self, send: np.ndarray, counts: list[int]) -> np.ndarray:
        """Concatenate every rank's 1-D block, in rank order (``MPI_Allgatherv``).

        Parameters
        ----------
        send : numpy.ndarray, shape (counts[rank],)
            This rank's block (contiguous host memory).
        counts : list of int, length size
            Every rank's block length (the same list on every rank).

        Returns
        -------
        numpy.ndarray, shape (sum(counts),)
            Same dtype as ``send``.
        """
        send = np.ascontiguousarray(send)
        if send.ndim != 1 or len(counts) != self.size or int(send.shape[0]) != int(counts[self.rank]):
            raise ValueError(f"rank {self.rank}: send has shape {send.shape} but counts[{self.rank}] = "
                             f"{counts[self.rank] if len(counts) == self.size else '?'} (counts {list(counts)}, "
                             f"size {self.size}); every rank must pass the same counts")
        if self.size == 1:
            return send.copy()
        self.bytes_sent += send.nbytes
        out = np.empty(int(sum(counts)), dtype=send.dtype)
        displs = [int(sum(counts[:r])) for r in range(self.size)]
        self.mpi.Allgatherv(send, [out, ([int(c) for c in counts], displs)])
        return out

    def allreduce_sum(self, buf: Any) -> Any:
        """Sum ``buf`` over all ranks, in place (``MPI_Allreduce``); returns ``buf``.

        Parameters
        ----------
        buf : numpy.ndarray, or a device array when :func:`cuda_aware` is True
            One contiguous 1-D buffer (e.g. all gradients flattened).

        Returns
        -------
        array
            ``buf``, now holding the sum (identical on every rank).
        """
        if self.size > 1:
            from mpi4py import MPI

            self.bytes_sent += int(buf.nbytes)
            self.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        return buf

    def bcast_float(self, value: float | None, root: int) -> float:
        """Broadcast one float64 from ``root`` (``MPI_Bcast`` of 8 bytes).

        Parameters
        ----------
        value : float or None
            The value on ``root``; ignored elsewhere.
        root : int

        Returns
        -------
        float
            ``root``'s value, on every rank.
        """
        buf = np.array([np.nan if value is None else float(value)], dtype=np.float64)
        if self.size > 1:
            self.bytes_sent += 8 if self.rank == root else 0
            self.mpi.Bcast(buf, root=root)
        return float(buf[0])

    def allgather_object(self, obj: Any) -> list:
        """Every rank's small picklable ``obj``, in rank order.

        Parameters
        ----------
        obj : object

        Returns
        -------
        list, length size
        """
        return [obj] if self.mpi is None else list(self.mpi.allgather(obj))

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """``root``'s small picklable ``obj`` on every rank.

        Parameters
        ----------
        obj : object
        root : int

        Returns
        -------
        object
        """
        return obj if self.mpi is None else self.mpi.bcast(obj, root=root)

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.mpi is not None:
            self.mpi.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job with status ``code`` (``MPI_Abort``; ``sys.exit`` without MPI).

        Parameters
        ----------
        code : int

        Returns
        -------
        None
            Does not return.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mpi is not None:
            self.mpi.Abort(int(code))
        raise SystemExit(int(code))


_WORLD: Comm | None = None


def world() -> Comm:
    """The communicator of all processes: ``MPI.COMM_WORLD``, or one process without mpi4py.

    mpi4py is imported on the first call (so ``import egdnp`` never needs it).
    Set ``EGDNP_MPI=0`` to run as one process even where mpi4py is installed.

    Returns
    -------
    Comm
    """
    global _WORLD
    if _WORLD is None:
        mpi_comm = None
        if os.environ.get("EGDNP_MPI", "1") != "0":
            try:
                from mpi4py import MPI
            except ImportError:
                MPI = None
            if MPI is not None:
                mpi_comm = MPI.COMM_WORLD
        _WORLD = Comm(mpi_comm)
    return _WORLD


def _report_and_abort(comm: Comm, exc: BaseException) -> None:
    sys.stdout.flush()
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    sys.stderr.write(f"egdnp.distributed: rank {comm.rank} of {comm.size} failed with "
                     f"{type(exc).__name__}: {exc}; aborting the whole job\n")
    sys.stderr.flush()
    comm.abort(1)


@contextmanager
def abort_on_error(comm: Comm | None = None) -> Iterator[Comm]:
    """Run a block so that an exception on any rank ends the whole job.

    The failing rank prints its traceback and ``rank r of n failed with ...``
    to stderr and calls ``MPI_Abort(1)``: the other ranks, possibly waiting in
    a collective, are killed by the MPI launcher within seconds and
    ``mpiexec`` exits non-zero.  ``SystemExit(0)`` passes through.  With one
    process the exception propagates as usual.

    Parameters
    ----------
    comm : Comm, optional
        Default :func:`world`.

    Yields
    ------
    Comm
        The communicator.
    """
    comm = world() if comm is None else comm
    try:
        yield comm
    except SystemExit as exc:
        if exc.code in (None, 0) or comm.size == 1:
            raise
        _report_and_abort(comm, exc)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must end the job too
        if comm.size == 1:
            raise
        _report_and_abort(comm, exc)


def install_excepthook(comm: Comm | None = None) -> None:
    """Make an uncaught exception on any rank abort the whole job (see :func:`abort_on_error`).

    Parameters
    ----------
    comm : Comm, optional
        Default :func:`world`.

    Returns
    -------
    None
    """
    comm = world() if comm is None else comm
    previous = sys.excepthook

    def hook(kind, exc, tb):
        if comm.size == 1:
            previous(kind, exc, tb)
            return
        _report_and_abort(comm, exc.with_traceback(tb))

    sys.excepthook = hook


def device_index(local_rank: int, n_devices: int) -> int:
    """The GPU of a process: ``local_rank % n_devices``.

    Parameters
    ----------
    local_rank : int
        Rank among the processes of one machine (:attr:`Comm.local_rank`).
    n_devices : int
        GPUs on the machine (>= 1).

    Returns
    -------
    int
        In ``[0, n_devices)``; processes beyond the GPU count share GPUs round-robin.

    Raises
    ------
    ValueError
        ``n_devices < 1`` or ``local_rank < 0``.
    """
    for name, value, low in (("local_rank", local_rank, 0), ("n_devices", n_devices, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}={value!r} must be an int >= {low}")
    return int(local_rank) % int(n_devices)


def select_device(xp: Any = "cupy", comm: Comm | None = None) -> Any:
    """Make this process's device current: ``local_rank % device_count`` (CuPy), nothing for host backends.

    Parameters
    ----------
    xp : namespace or name
        ``"cupy"`` (or the CuPy module) picks a GPU; any other namespace has one device.
    comm : Comm, optional
        Default :func:`world`.

    Returns
    -------
    device
        The selected ``cupy.cuda.Device`` (``egdnp._backend.select_device``), or ``"cpu"``.
    """
    comm = world() if comm is None else comm
    gpu = xp.lower() == "cupy" if isinstance(xp, str) else _backend.is_cupy(xp)
    if not gpu:
        return "cpu"  # host namespaces compute on the one host device
    return _backend.select_device(device_index(comm.local_rank, _backend.device_count()))


def cuda_aware(xp: Any = None) -> bool:
    """Whether collectives can take device (CuPy) buffers directly.

    True only when ``xp`` is CuPy, mpi4py is importable and the MPI library
    reports CUDA support (``MPI.Query_cuda_support()``, Open MPI's
    ``MPIX_Query_cuda_support``; where mpi4py lacks it, the environment
    variable ``EGDNP_MPI_CUDA_AWARE=1`` asserts it).  Otherwise buffers go
    through (pinned) host memory.

    Parameters
    ----------
    xp : namespace or name, optional
        The compute namespace; host namespaces always give False.

    Returns
    -------
    bool
    """
    if xp is None or not _backend.is_cupy(_backend.get_namespace(xp)):
        return False
    return _mpi_reports_cuda()


def _mpi_reports_cuda() -> bool:
    override = os.environ.get("EGDNP_MPI_CUDA_AWARE")
    if override is not None:
        return override == "1"
    try:
        from mpi4py import MPI
    except ImportError:
        return False
    query = getattr(MPI, "Query_cuda_support", None)
    try:
        return bool(query()) if query is not None else False
    except Exception:  # noqa: BLE001 - an MPI without the extension: not CUDA-aware
        return False
