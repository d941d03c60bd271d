"""Reading golden cases (``tests/golden/*.json``, layout in ``tests/golden/SCHEMA.md``) into tensors.

Shared by the parity tests, the advantage adapters and ``tests/golden/regenerate_from_nemo_rl.py``.
"""

from __future__ import annotations

import math

import torch

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def decode(value):
    """JSON numbers back to Python numbers; the strings "inf", "-inf" and "nan" to floats (lists recurse)."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, str):
        return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}[value]
    return value


def to_tensor(value, dtype_name: str) -> torch.Tensor:
    """One recorded input as a tensor of its recorded dtype; an unknown dtype name is an error."""
    if dtype_name not in DTYPES:
        raise ValueError(f"unknown input dtype {dtype_name!r}")
    return torch.tensor(decode(value), dtype=DTYPES[dtype_name])


def case_tensors(case: dict, allowed: set[str] | None = None) -> dict:
    """The case's inputs as tensors with their recorded dtypes (``None`` stays ``None``; dicts recurse).

    With ``allowed``, raises ``ValueError`` naming any input outside it.
    """
    if allowed is not None:
        unknown = sorted(set(case["inputs"]) - allowed)
        if unknown:
            raise ValueError(
                f"{case.get('case_id')}: inputs {unknown} are not understood "
                f"by the {case['function']} adapter"
            )
    dtypes = case.get("input_dtypes", {})
    out = {}
    for name, value in case["inputs"].items():
        if value is None:
            out[name] = None
        elif isinstance(value, dict):
            out[name] = {k: to_tensor(v, dtypes[name][k]) for k, v in value.items()}
        else:
            out[name] = to_tensor(value, dtypes[name])
    return out
