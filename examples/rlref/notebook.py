"""The first cell of every example notebook: seed, device, size knob and provenance; and glue.

One knob chooses the scale of a notebook run: the environment variable ``RLREF_SCALE``
(``small`` or ``full``). Its automatic default is ``full`` when CUDA is available and
``small`` otherwise, so a notebook runs in seconds on a CPU and at full size on a GPU.

A second knob moves every seed a notebook uses: ``RLREF_SEED_OFFSET`` (default 0) is added to
the seed of :func:`setup`, to :meth:`Run.generator` and to every seed of :meth:`Run.seeds`.
``nox -s robustness`` runs every notebook with a second block of seeds this way, so an assertion
that guards a page's conclusion must hold for any block of seeds, not only for seeds 0..n-1.

:func:`glue` stores a computed result under a name, and the page pastes it with myst-nb's
``{glue:text}`` role (``{glue:text}`/examples/<section>/<slug>.md::name:.3f``` from a page in
``docs/``): no measured number is typed into prose.
"""

from __future__ import annotations

import os
import platform
import random
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch

SCALES = ("small", "full")
GLUE_PREFIX = "application/papermill.record/"  # myst-nb's mime prefix for glued, undisplayed values


def seed_offset() -> int:
    """``$RLREF_SEED_OFFSET`` as a non-negative int (0 when unset)."""
    raw = os.environ.get("RLREF_SEED_OFFSET", "0")
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"RLREF_SEED_OFFSET must be a non-negative integer, got {raw!r}") from None
    if offset < 0:
        raise ValueError(f"RLREF_SEED_OFFSET must be a non-negative integer, got {raw!r}")
    return offset


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
    """What a notebook needs to know about its run; ``pick(small, full)`` applies the size knob.

    ``seed`` already includes ``$RLREF_SEED_OFFSET``; ``seeds(n)`` gives the n seeds of a
    multi-seed experiment, ``seed, seed+1, ..., seed+n-1``.
    """

    seed: int
    scale: str
    device: torch.device
    started: float = field(default_factory=time.perf_counter)

    def seeds(self, n: int) -> list[int]:
        """The seeds of an n-seed experiment: ``[seed, ..., seed + n - 1]`` (moved by the offset)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of seeds must be a positive int, got {n!r}")
        return list(range(self.seed, self.seed + n))

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

    The seed used is ``seed + $RLREF_SEED_OFFSET``. On CPU, ``deterministic=True`` also turns on
    ``torch.use_deterministic_algorithms`` so that two runs of a notebook print identical numbers.
    """
    seed = seed + seed_offset()
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


def _plain(value):
    """numpy and torch scalars as Python numbers, so ``{glue:text}`key:.3f``` can format them."""
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        if getattr(value, "ndim", 0) != 0:
            raise TypeError(f"glue takes a scalar, a string or a figure; got an array of shape {value.shape}")
        return value.item()
    return value


def glue(name: str, value, display: bool = False) -> None:
    """Store ``value`` under ``name`` for myst-nb's ``{glue}`` roles and directives.

    The same record as ``myst_nb.glue`` (so pages paste it), without importing myst-nb in the
    kernel. Numbers paste with a format spec (``{glue:text}`name:.3f```); strings, such as an
    interval or a sentence whose wording depends on the outcome, with ``:s``; a matplotlib
    figure with ``{glue:figure}``. ``display=True`` also shows the value in the cell's output.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"glue name must be letters, digits, '_', '.' or '-', got {name!r}")
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    value = _plain(value)
    bundle, metadata = format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
