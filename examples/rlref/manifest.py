"""A run manifest: what a reader needs to rerun an experiment and get the same numbers.

NeMo RL prints its resolved "Final config" at start-up and seeds with ``set_seed`` but records no
environment manifest; this is a recipe to keep beside every run's logs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch

DEFAULT_PACKAGES = ("torch", "numpy", "scipy", "matplotlib")
# environment variables that change which kernels run (and so the bits of a result)
ENV_KEYS = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS",
            "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def _git(cwd: Path, *args: str) -> str | None:
    """Output of ``git <args>`` in ``cwd``, or None outside a repository or without git."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def config_hash(config: dict) -> str:
    """sha256 of the config serialised as sorted-key JSON: equal configs give equal hashes."""
    try:
        blob = json.dumps(config, sort_keys=True, default=str)
    except TypeError as exc:
        raise TypeError(f"config must be JSON-serialisable: {exc}") from None
    return hashlib.sha256(blob.encode()).hexdigest()


def run_manifest(config: dict, seed: int, packages=DEFAULT_PACKAGES, repo: Path | str = ".") -> dict:
    """Everything that determines a run's numbers: config, seed, code, software and hardware."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    repo = Path(repo)
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    status = _git(repo, "status", "--porcelain")
    return {
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "config": config,
        "config_sha256": config_hash(config),
        "git_commit": _git(repo, "rev-parse", "HEAD") or None,
        "git_dirty": None if status is None else bool(status),
        "python": sys.version.split()[0],
        "packages": versions,
        "platform": platform.platform(),
        "cpu": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD code path kernels dispatch to
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }
