"""A results cache shared by the notebooks: ``cached(key, compute)`` runs ``compute()`` once per key.

The file name is the SHA-256 of a canonical JSON of

- ``key``: what the caller says determines the result (configs, seeds, task, arm names, ...). Plain
  values, lists, dicts, dataclasses (e.g. :class:`rlref.lab.GRPOConfig`), enums, torch dtypes, tensors
  and arrays (by their bytes), ``nn.Module`` (by its ``state_dict``) and plain objects (by type and
  ``vars``) are accepted; a function or lambda is refused with a :class:`TypeError` naming where it
  sits in the key, because its code cannot be keyed reliably (name the option in the key instead);
- the source of the ``rlref`` package (every ``examples/rlref/**/*.py``): any code change is a miss;
- the numerics of this process: torch/NumPy/Python versions, the CPU capability ATen dispatches to,
  the instruction-set environment variables (``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``,
  ``ONEDNN_MAX_CPU_ISA``, ``MKL_CBWR``), the thread count, deterministic mode, the GPU name if any;
- every ``RLREF_*`` environment variable (``RLREF_SEED_OFFSET``, ``RLREF_SCALE``, ...), so a result
  computed under another seed offset or instruction set is never returned, even when ``key`` forgot
  the seeds.

Entries live in ``$RLREF_RESULTS_CACHE`` (default ``<repo>/_build/.rlref_results``, git-ignored with
``_build``); ``RLREF_RESULTS_CACHE=off`` (or ``0``, ``false``, ``no``) disables the cache: ``compute()``
always runs and nothing is written. Writes are atomic (a temporary file in the same directory, then
``os.replace``), so notebooks running in parallel never read a half-written entry; two that miss
the same key at once both compute and the last rename wins, with equal contents. Values are stored
with ``torch.save`` (pickle): lists of :class:`rlref.lab.History`, arrays, dicts. Only load a cache
directory you wrote yourself: unpickling runs code.

Lab-only (NeMo RL has no results cache; its runs write checkpoints and logs).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import math
import os
import pickle
import platform
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["cached", "cache_dir", "cache_key", "canonical", "code_fingerprint", "environment_fingerprint"]

T = TypeVar("T")
PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parents[1]
DEFAULT_DIR = REPO_ROOT / "_build" / ".rlref_results"
_OFF = ("0", "off", "false", "no")
_ISA_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")
_NOT_KEYED = ("RLREF_RESULTS_CACHE", "RLREF_GIT_COMMIT")  # where results go / which commit: code is hashed


def cache_dir() -> Path | None:
    """The cache directory, or None when ``$RLREF_RESULTS_CACHE`` switches the cache off."""
    raw = os.environ.get("RLREF_RESULTS_CACHE", "").strip()
    if raw.lower() in _OFF:
        return None
    return Path(raw) if raw else DEFAULT_DIR


def canonical(obj: Any, path: str = "key") -> Any:
    """``obj`` as plain JSON data (dicts with sorted string keys, lists, str, int, float, bool, None)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, enum.Enum):
        return {"__enum__": f"{type(obj).__module__}.{type(obj).__qualname__}", "name": obj.name}
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return canonical(obj.item(), path)
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return {"__" + type(obj).__name__ + "__": str(obj)}
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        arr = obj.detach().cpu().contiguous() if isinstance(obj, torch.Tensor) else np.ascontiguousarray(obj)
        raw = arr.view(torch.uint8).numpy().tobytes() if isinstance(arr, torch.Tensor) else arr.tobytes()
        return {"__array__": str(arr.dtype), "shape": list(arr.shape),
                "sha256": hashlib.sha256(raw).hexdigest()}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"{path} has a key of type {type(k).__name__}; use str/int keys")
            out[str(k)] = canonical(v, f"{path}[{k!r}]")
        return {"__dict__": dict(sorted(out.items()))}
    if isinstance(obj, (list, tuple)):
        return [canonical(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        items = [canonical(v, f"{path}{{...}}") for v in obj]
        return {"__set__": sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: canonical(getattr(obj, f.name), f"{path}.{f.name}")
                  for f in dataclasses.fields(obj)}
        return {"__type__": name, "fields": fields}
    if isinstance(obj, torch.nn.Module):
        return {"__type__": name, "state_dict": canonical(dict(obj.state_dict()), f"{path}.state_dict()")}
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                        functools.partial)):
        raise TypeError(f"{path} is a {type(obj).__name__} ({obj!r}); functions and classes cannot be keyed "
                        "by content: put a name or the settings that define it in the key instead")
    if hasattr(obj, "__dict__"):
        return {"__type__": name, "vars": canonical(vars(obj), f"{path}.vars()")}
    raise TypeError(f"{path} of type {type(obj).__name__} cannot be turned into a cache key")


def code_fingerprint(root: Path | None = None) -> str:
    """SHA-256 over the relative path and bytes of every ``*.py`` under ``root`` (default: rlref's)."""
    root = PACKAGE_ROOT if root is None else Path(root)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def environment_fingerprint() -> dict[str, Any]:
    """What besides the key and the code decides the numbers: versions, ISA, threads, RLREF_* settings."""
    env = {k: v for k, v in os.environ.items() if k.startswith("RLREF_") and k not in _NOT_KEYED}
    env.update({k: os.environ.get(k) for k in _ISA_VARS})
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "env": dict(sorted(env.items())),
    }


def _full_key(key: Mapping[str, Any], code_root: Path | None) -> dict[str, Any]:
    if not isinstance(key, Mapping):
        raise TypeError(f"key must be a dict describing the computation, got {type(key).__name__}")
    return {"key": canonical(key), "code": code_fingerprint(code_root),
            "environment": environment_fingerprint()}


def cache_key(key: Mapping[str, Any], code_root: Path | None = None) -> str:
    """The hex digest naming ``key``'s entry in this environment with this code."""
    blob = json.dumps(_full_key(key, code_root), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def cached(key: Mapping[str, Any], compute: Callable[[], T], *, code_root: Path | None = None) -> T:
    """``compute()``, or the value stored under ``key`` by an earlier call with the same code and numerics.

    ``key`` must contain everything the result depends on that the code and the environment do not:
    configs (with their seeds), task, scale, arm names. ``code_root`` (tests) replaces the package
    whose source is hashed. A stored entry that cannot be read is recomputed and replaced; a value
    that cannot be pickled is returned with a RuntimeWarning and not stored.
    """
    if not callable(compute):
        raise TypeError(f"compute must be a callable taking no arguments, got {type(compute).__name__}")
    directory = cache_dir()
    if directory is None:
        return compute()
    full = _full_key(key, code_root)
    blob = json.dumps(full, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(blob.encode()).hexdigest()
    path = directory / digest[:2] / f"{digest}.pt"
    if path.exists():
        try:
            entry = torch.load(path, weights_only=False)
            if isinstance(entry, dict) and entry.get("key") == blob:
                return entry["value"]
        except Exception as exc:  # a truncated or foreign file: recompute and overwrite it
            warnings.warn(f"results cache entry {path} unreadable ({exc!r}); recomputing", RuntimeWarning,
                          stacklevel=2)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{digest}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"key": blob, "value": value}, f)
        os.replace(tmp, path)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        warnings.warn(f"result not cached: it cannot be pickled ({exc!r})", RuntimeWarning, stacklevel=2)
    finally:
        Path(tmp).unlink(missing_ok=True)  # left only if the write failed
    return value
