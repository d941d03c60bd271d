"""The first cell of every example notebook: seed, device, size knob and provenance.

One knob chooses the scale of a notebook run: the environment variable ``RLREF_SCALE``
(``small`` or ``full``). Its automatic default is ``full`` when CUDA is available and
``small`` otherwise, so a notebook runs in seconds on a CPU and at full size on a GPU.
"""

from __future__ import annotations

import os
import platform
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

SCALES = ("small", "full")


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def choose_scale(requested: str | None = None) -> str:
    """Return ``"small"`` or ``"full"``: the argument, else ``$RLREF_SCALE``, else by device."""
    scale = requested or os.environ.get("RLREF_SCALE") or ("full" if torch.cuda.is_available() else "small")
    if scale not in SCALES:
        raise ValueError(f"RLREF_SCALE must be one of {SCALES}, got {scale!r}")
    return scale


def device_name(device: torch.device) -> str:
    """A human-readable name of the device: the GPU model, or the CPU architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass
class Run:
    """What a notebook needs to know about its run; ``pick(small, full)`` applies the size knob."""

    seed: int
    scale: str
    device: torch.device
    started: float = field(default_factory=time.perf_counter)

    def pick(self, small, full):
        """Return ``small`` at the small (CPU) scale and ``full`` at the full (GPU) scale."""
        return full if self.scale == "full" else small

    def generator(self, offset: int = 0) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded with ``seed + offset``, for reproducible data."""
        return torch.Generator().manual_seed(self.seed + offset)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def report(self) -> None:
        """Print how long the notebook took (the last cell of every notebook calls this)."""
        where = f"at scale '{self.scale}' on {device_name(self.device)}"
        print(f"Notebook executed in {self.elapsed():.1f} s {where}.")


def setup(seed: int = 0, scale: str | None = None, deterministic: bool = True) -> Run:
    """Seed everything, choose device and scale, and print the provenance line.

    On CPU, ``deterministic=True`` also turns on ``torch.use_deterministic_algorithms`` so
    that two runs of a notebook print identical numbers.
    """
    seed_everything(seed)
    scale = choose_scale(scale)
    device = torch.device("cuda" if torch.cuda.is_available() and scale == "full" else "cpu")
    if device.type == "cpu":
        # One intra-op thread per notebook: the build runs notebooks in parallel, and on a shared
        # 2-core machine more threads only contend (measured 5-10x slower for the lab's small ops).
        torch.set_num_threads(int(os.environ.get("RLREF_CPU_THREADS", "1")))
        if deterministic:
            torch.use_deterministic_algorithms(True)
    run = Run(seed=seed, scale=scale, device=device)
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    print(
        f"Provenance: device={device_name(device)}, torch={torch.__version__}{cuda}, "
        f"python={platform.python_version()}, seed={seed}, scale={scale}"
    )
    return run
