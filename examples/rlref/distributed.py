"""Data-parallel training in miniature: communication volumes, byte counting, loss normalisation.

Communication volume (per rank; bytes sent = bytes received) for ``p`` ranks and ``n`` bytes:

==================  =====================================  ==========================================
collective          ``n`` is                               bytes each rank sends (ring algorithm)
==================  =====================================  ==========================================
all-reduce          the tensor reduced on every rank       ``2 (p - 1) / p * n``
all-gather          the gathered output (``p`` shards)     ``(p - 1) / p * n``
reduce-scatter      the full input (``p`` shards)          ``(p - 1) / p * n``
==================  =====================================  ==========================================

:func:`wire_bytes` computes them and :func:`bus_bandwidth` turns a measured time into the
"bus bandwidth" of nccl-tests (wire bytes per second): when the formulas hold, the three collectives
show the same bus bandwidth on the same link. :class:`CommCounter` records the bytes of every tensor
handed to ``torch.distributed``'s collectives (FSDP2 calls them from Python) and
:func:`ddp_counting_hook` does the same for DDP's gradient buckets (reduced in C++, reachable only
through a communication hook).

Data-parallel loss normalisation (NeMo RL, nemo_rl/models/automodel/data.py:404-430 and
nemo_rl/models/automodel/train.py:545-548): every rank divides its masked token sum by the *global*
number of valid tokens (:func:`global_valid_counts`, an all-reduce) and multiplies the loss by the
data-parallel size, so that DDP's or FSDP's gradient *average* becomes the gradient of the global
token mean, whatever the token counts of the ranks.

Nothing here imports ``nemo_rl``.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = [
    "COLLECTIVES",
    "CommCounter",
    "CommRecord",
    "bus_bandwidth",
    "ddp_counting_hook",
    "dim0_shard_numel",
    "free_port",
    "fsdp2_collective_bytes",
    "global_valid_counts",
    "launch_torchrun",
    "optimizer_state_bytes",
    "tensor_bytes",
    "wire_bytes",
    "wire_factor",
]

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter")


# --------------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------------


def _check_world_size(world_size) -> int:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
    return world_size


def _check_collective(collective) -> str:
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    return collective


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def wire_factor(collective: str, world_size: int) -> float:
    """Bytes each rank sends per byte of ``n`` (see the module table): ``2(p-1)/p`` or ``(p-1)/p``."""
    _check_collective(collective)
    p = _check_world_size(world_size)
    base = (p - 1) / p
    return 2.0 * base if collective == "all_reduce" else base


def wire_bytes(collective: str, nbytes: float, world_size: int) -> float:
    """Bytes each rank sends (and receives) in a ring ``collective`` over ``nbytes`` (module table)."""
    return wire_factor(collective, world_size) * _check_nonneg("nbytes", nbytes)


def bus_bandwidth(collective: str, nbytes: float, seconds: float, world_size: int) -> float:
    """nccl-tests' bus bandwidth, ``wire_bytes / seconds`` in bytes/s (algorithm bandwidth x factor).

    The algorithm bandwidth ``nbytes / seconds`` depends on the collective; the bus bandwidth does
    not, if the volume formula is right: it is the rate at which each rank's link moves bytes.
    """
    seconds = _check_nonneg("seconds", seconds)
    if seconds == 0:
        raise ValueError("seconds must be > 0")
    return wire_bytes(collective, nbytes, world_size) / seconds


def tensor_bytes(t: torch.Tensor) -> int:
    """``numel * element_size`` of a tensor (its local part for a DTensor)."""
    if hasattr(t, "to_local"):
        t = t.to_local()
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(t).__name__}")
    return t.numel() * t.element_size()


def dim0_shard_numel(shape: Sequence[int], world_size: int) -> int:
    """Elements per rank when FSDP2 shards a parameter of ``shape`` on dim 0 over ``world_size`` ranks.

    Dim 0 is padded up to a multiple of ``p``: ``ceil(shape[0] / p) * prod(shape[1:])`` (a 0-d
    parameter counts as shape ``(1,)``).
    """
    p = _check_world_size(world_size)
    shape = tuple(shape) or (1,)
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"shape must be non-negative ints, got {shape!r}")
    rest = math.prod(shape[1:])
    return -(-shape[0] // p) * rest


def fsdp2_collective_bytes(groups: Iterable[tuple[Sequence[Sequence[int]], bool]], world_size: int,
                           element_size: int = 4, grad_element_size: int | None = None) -> dict[str, int]:
    """Tensor bytes FSDP2 hands to its collectives in one forward + backward.

    ``groups``: one entry per ``fully_shard`` call, ``(parameter shapes, reshard_after_forward)``.
    Each group all-gathers its padded parameters before forward (output = ``p`` shards), all-gathers
    them again before backward if they were resharded after forward, and reduce-scatters its padded
    gradients once. FSDP2 keeps the *root* module's parameters unsharded after forward (they would be
    gathered again at once), so pass ``False`` for the root group. ``element_size`` is the bytes per
    gathered parameter element (2 for bf16 ``param_dtype``), ``grad_element_size`` those per reduced
    gradient element (default: the same; 4 with NeMo RL's ``reduce_dtype=float32``). Returns
    ``{"all_gather": bytes, "reduce_scatter": bytes}`` (sizes of the gathered output / the scattered
    input, i.e. ``n`` in the module table).
    """
    p = _check_world_size(world_size)
    grad_element_size = element_size if grad_element_size is None else grad_element_size
    for name, v in (("element_size", element_size), ("grad_element_size", grad_element_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    ag = rs = 0
    for shapes, reshard in groups:
        numel = p * sum(dim0_shard_numel(s, p) for s in shapes)
        ag += numel * element_size * (2 if reshard else 1)
        rs += numel * grad_element_size
    return {"all_gather": ag, "reduce_scatter": rs}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state`` held by this rank (local shards for DTensors)."""
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                total += tensor_bytes(v)
    return total


# --------------------------------------------------------------------------------------------------
# Global normalisation over data-parallel ranks
# --------------------------------------------------------------------------------------------------


def global_valid_counts(token_mask: torch.Tensor, sample_mask: torch.Tensor,
                        group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(global_valid_seqs, global_valid_toks)`` summed over the data-parallel ranks.

    Per rank: ``sum(sample_mask)`` and ``sum(token_mask[:, 1:] * sample_mask[:, None])``, then one
    all-reduce (SUM) when a process group is initialised (NeMo RL: nemo_rl/models/automodel/data.py:
    404-430). Without ``torch.distributed`` initialised these are the local counts.
    """
    if not isinstance(token_mask, torch.Tensor) or token_mask.dim() != 2:
        raise ValueError("token_mask must be a [B, S] tensor")
    if not isinstance(sample_mask, torch.Tensor) or sample_mask.shape != token_mask.shape[:1]:
        raise ValueError(f"sample_mask must be [B] = [{token_mask.shape[0]}], got "
                         f"{tuple(getattr(sample_mask, 'shape', ()))}")
    sm = sample_mask.float()
    counts = torch.stack([sm.sum(), (token_mask[:, 1:].float() * sm[:, None]).sum()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts, group=group)
    return counts[0], counts[1]


# --------------------------------------------------------------------------------------------------
# Counting what goes into the collectives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommRecord:
    """One collective call: ``op`` in :data:`COLLECTIVES`, ``nbytes`` (``n`` of the module table),
    ``seconds`` (wall time of a blocking call, with the device synchronised before and after it when
    the tensor is on a GPU, so that NCCL's queued work is counted and not only its enqueue; None for
    an asynchronous one)."""

    op: str
    nbytes: int
    seconds: float | None


# torch.distributed function -> (collective, which argument is ``n``: "input" or "output")
_PATCHABLE = {
    "all_reduce": ("all_reduce", "input"),
    "all_gather_single": ("all_gather", "output"),
    "all_gather_into_tensor": ("all_gather", "output"),
    "reduce_scatter_single": ("reduce_scatter", "input"),
    "reduce_scatter_tensor": ("reduce_scatter", "input"),
}


def _sync_if_cuda(t, async_op: bool) -> None:
    """``torch.cuda.synchronize`` on the tensor's device (a CUDA collective returns once enqueued)."""
    if not async_op and isinstance(t, torch.Tensor) and t.is_cuda:
        torch.cuda.synchronize(t.device)


@dataclass
class CommCounter:
    """Record every collective issued through ``torch.distributed`` while active.

    ``with CommCounter() as c: ...`` replaces ``torch.distributed.all_reduce``,
    ``all_gather_single`` / ``all_gather_into_tensor`` and ``reduce_scatter_single`` /
    ``reduce_scatter_tensor`` (those that exist in this torch) by wrappers that append a
    :class:`CommRecord` to ``c.records`` and call the original. Nested calls (a deprecated name
    calling its successor) count once. DDP's gradient all-reduce runs in C++ and is not seen here:
    use :func:`ddp_counting_hook`.
    """

    records: list[CommRecord] = field(default_factory=list)
    _saved: dict = field(default_factory=dict, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def add(self, op: str, nbytes: int, seconds: float | None) -> None:
        _check_collective(op)
        self.records.append(CommRecord(op, int(nbytes), seconds))

    def total(self, op: str) -> int:
        """Sum of ``nbytes`` over the records of ``op``."""
        _check_collective(op)
        return sum(r.nbytes for r in self.records if r.op == op)

    def count(self, op: str) -> int:
        _check_collective(op)
        return sum(1 for r in self.records if r.op == op)

    def clear(self) -> None:
        self.records.clear()

    def _wrap(self, name: str, fn):
        op, which = _PATCHABLE[name]
        counter = self

        def wrapper(*args, **kwargs):
            depth = getattr(counter._local, "depth", 0)
            if depth:
                return fn(*args, **kwargs)
            if op == "all_reduce":
                t = kwargs.get("tensor", args[0] if args else None)
            elif which == "output":
                t = kwargs.get("output_tensor", kwargs.get("output", args[0] if args else None))
            else:
                t = kwargs.get("input_tensor", kwargs.get("input", args[1] if len(args) > 1 else None))
            async_op = bool(kwargs.get("async_op", False))
            counter._local.depth = 1
            try:
                _sync_if_cuda(t, async_op)
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                _sync_if_cuda(t, async_op)
                dt = None if async_op else time.perf_counter() - t0
            finally:
                counter._local.depth = 0
            counter.add(op, tensor_bytes(t), dt)
            return out

        wrapper.__wrapped__ = fn
        return wrapper

    def __enter__(self) -> CommCounter:
        if self._saved:
            raise RuntimeError("this CommCounter is already active")
        for name in _PATCHABLE:
            fn = getattr(dist, name, None)
            if fn is not None:
                self._saved[name] = fn
                setattr(dist, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._saved.items():
            setattr(dist, name, fn)
        self._saved.clear()


def ddp_counting_hook(counter: CommCounter):
    """A DDP communication hook that records each gradient bucket, then averages it (all-reduce / p).

    Register with ``ddp_model.register_comm_hook(None, ddp_counting_hook(counter))``. The all-reduce
    is blocking inside the hook (so it can be timed; on a GPU the device is synchronised around it);
    DDP's own hook overlaps it with backward.
    """
    if not isinstance(counter, CommCounter):
        raise TypeError(f"counter must be a CommCounter, got {type(counter).__name__}")

    def hook(state, bucket):
        buf = bucket.buffer()
        _sync_if_cuda(buf, False)
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        _sync_if_cuda(buf, False)
        counter.add("all_reduce", tensor_bytes(buf), time.perf_counter() - t0)
        buf.div_(dist.get_world_size())
        fut = torch.futures.Future()
        fut.set_result(buf)
        return fut

    return hook


# --------------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a gloo rendezvous)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_torchrun(script: str | Path, args: Sequence[str] = (), nproc_per_node: int = 2,
                    timeout: float = 300.0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node N script args``.

    ``--standalone`` picks a free rendezvous port, so concurrent launches do not collide.
    ``OMP_NUM_THREADS`` defaults to 1 per process. Raises ``RuntimeError`` with the tail of the
    output if the job fails or times out; returns the completed process (``.stdout``) otherwise.
    """
    script = Path(script)
    if not script.is_file():
        raise ValueError(f"script {str(script)!r} does not exist")
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be a positive int, got {nproc_per_node!r}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc_per_node}", str(script), *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"torchrun {script.name} timed out after {timeout} s") from e
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"torchrun {script.name} failed with exit code {proc.returncode}:\n{tail}")
    return proc
