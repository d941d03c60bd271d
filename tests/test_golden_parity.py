"""Golden parity: rlref reproduces NeMo RL's own outputs on recorded cases.

Each ``tests/golden/*.json`` holds inputs, a config spelled with NeMo RL's keys, and the loss,
metrics and gradients that NeMo RL returned at commit 7ea279abfbeb698b092856d0dab61e7cf39bc909
(see tests/golden/PROVENANCE.md and tests/golden/SCHEMA.md). More case directories can be added
with the environment variable ``NEMO_RL_GOLDEN_DIRS`` (several joined with ``os.pathsep``).

Every value recorded in ``outputs`` is compared; a case this file cannot reproduce completely
(unknown function, unknown config key, an output it does not compute) fails, it is never skipped.
Select only these tests with ``pytest -k golden``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from golden_cases import case_tensors, decode

from rlref.kl import calculate_kl
from rlref.losses import (
    ClippedPGLoss,
    ClippedPGLossConfig,
    DPOLoss,
    DPOLossConfig,
    NLLLoss,
    next_token_logprobs,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
N_SHIPPED_CASES = 90
ENV_VAR = "NEMO_RL_GOLDEN_DIRS"

# Inputs that are not part of a loss function's ``data`` dict.
_NOT_DATA = {"input_ids", "logits", "next_token_logprobs", "global_valid_toks", "global_valid_seqs"}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def golden_dirs() -> list[Path]:
    dirs = [GOLDEN_DIR]
    extra = os.environ.get(ENV_VAR, "")
    dirs += [Path(p) for p in extra.split(os.pathsep) if p.strip()]
    return dirs


def load_cases(dirs: list[Path] | None = None) -> list[dict]:
    """Every ``*.json`` case in ``dirs`` (default: tests/golden plus $NEMO_RL_GOLDEN_DIRS), sorted by file."""
    cases = []
    for directory in golden_dirs() if dirs is None else dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"golden case directory {str(directory)!r} does not exist")
        for path in sorted(directory.glob("*.json")):
            case = json.loads(path.read_text())
            for key in ("case_id", "function", "inputs", "outputs", "tolerance"):
                if key not in case:
                    raise ValueError(f"golden case {path} has no {key!r} entry")
            case["_path"] = str(path)
            cases.append(case)
    return cases


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


def _flatten(value, prefix: str = ""):
    if isinstance(value, torch.Tensor):
        value = value.detach().to(torch.float64).tolist()
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _shape(value):
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return (len(value),) + (_shape(value[0]) if value else ())
    return ()


def assert_matches(name: str, got, expected, tol: dict) -> None:
    """|got - exp| <= atol + rtol*|exp| elementwise; non-finite values must match exactly."""
    if _shape(got) != _shape(expected):
        raise AssertionError(f"{name}: shape {_shape(got)} != expected {_shape(expected)}")
    atol, rtol = tol["atol"], tol["rtol"]
    bad = []
    for (where, g), (_, e) in zip(_flatten(got), _flatten(decode(expected)), strict=True):
        g, e = float(g), float(e)
        if math.isnan(e) or math.isinf(e):
            ok = (math.isnan(e) and math.isnan(g)) or g == e
        else:
            ok = math.isfinite(g) and abs(g - e) <= atol + rtol * abs(e)
        if not ok:
            bad.append(f"{name}{where}: got {g!r}, expected {e!r}")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise AssertionError("; ".join(bad[:5]) + more)


# --------------------------------------------------------------------------------------------------
# Adapters: case -> outputs dict with the keys of case["outputs"]
# --------------------------------------------------------------------------------------------------


def _grad(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(t) if t.grad is None else t.grad


def _loss_inputs(case: dict):
    x = case_tensors(case)
    curr = x["next_token_logprobs"].clone().requires_grad_(True)
    data = {k: v for k, v in x.items() if k not in _NOT_DATA and v is not None}
    if "curr_logprobs_unfiltered" in data:
        data["curr_logprobs_unfiltered"] = data["curr_logprobs_unfiltered"].clone().requires_grad_(True)
    return x, curr, data


def _call_loss(case: dict, loss_fn) -> dict:
    x, curr, data = _loss_inputs(case)
    loss, metrics = loss_fn(
        next_token_logprobs=curr,
        data=data,
        global_valid_seqs=x["global_valid_seqs"],
        global_valid_toks=x["global_valid_toks"],
    )
    loss.sum().backward()  # NLL per-row mode returns a vector; the gradient is of its sum
    out = {
        "loss": loss.detach(),
        "metrics": metrics,
        "grad_next_token_logprobs": _grad(curr),
        # Not a NeMo output: lets the test check next_token_logprobs(logits, input_ids) too.
        "_recomputed_next_token_logprobs": next_token_logprobs(x["logits"], x["input_ids"]),
    }
    if "curr_logprobs_unfiltered" in data:
        out["grad_curr_logprobs_unfiltered"] = _grad(data["curr_logprobs_unfiltered"])
    return out


def adapt_clipped_pg(case: dict) -> dict:
    return _call_loss(case, ClippedPGLoss(ClippedPGLossConfig(**case["config"])))


def adapt_dpo(case: dict) -> dict:
    return _call_loss(case, DPOLoss(DPOLossConfig(**case["config"])))


def adapt_nll(case: dict) -> dict:
    return _call_loss(case, NLLLoss(**case["config"]))


def adapt_calculate_kl(case: dict) -> dict:
    x = case_tensors(case)
    logprobs = x["logprobs"].clone().requires_grad_(True)
    weights = x.get("importance_sampling_weights")
    if weights is not None:
        weights = weights.clone().requires_grad_(True)
    kl = calculate_kl(
        logprobs=logprobs,
        logprobs_reference=x["logprobs_reference"],
        importance_sampling_weights=weights,
        **case["config"],
    )
    (kl * x["upstream_grad"]).sum().backward()
    out = {"kl": kl.detach(), "grad_logprobs": _grad(logprobs)}
    if weights is not None:
        out["grad_importance_sampling_weights"] = _grad(weights)
    return out


LOSS_ADAPTERS: dict[str, Callable[[dict], dict]] = {
    "ClippedPGLossFn": adapt_clipped_pg,
    "DPOLossFn": adapt_dpo,
    "NLLLossFn": adapt_nll,
    "calculate_kl": adapt_calculate_kl,
}


def adapter_for(function: str) -> Callable[[dict], dict]:
    if function in LOSS_ADAPTERS:
        return LOSS_ADAPTERS[function]
    try:
        from golden_advantage_adapters import ADVANTAGE_ADAPTERS  # owned by the advantages tests
    except ModuleNotFoundError as err:
        pytest.fail(f"golden case function {function!r} needs tests/golden_advantage_adapters.py: {err}")

    if function in ADVANTAGE_ADAPTERS:
        return ADVANTAGE_ADAPTERS[function]
    known = sorted(LOSS_ADAPTERS) + sorted(ADVANTAGE_ADAPTERS)
    pytest.fail(f"golden case has unknown function {function!r}; known: {known}")


def check_case(case: dict) -> None:
    """Run the case's function through rlref and compare every recorded output."""
    adapter = adapter_for(case["function"])
    try:
        got = adapter(case)
    except (TypeError, ValueError) as err:
        pytest.fail(f"{case['case_id']} ({case['_path']}): rlref rejected the case: {err}")
    tol = case["tolerance"]
    expected = case["outputs"]
    missing = sorted(set(expected) - set(got))
    if missing:
        pytest.fail(f"{case['case_id']}: the adapter for {case['function']} does not produce {missing}")
    errors = []
    for name, exp in expected.items():
        if name == "metrics":
            exp_names, got_names = set(exp), set(got["metrics"])
            if exp_names != got_names:
                errors.append(
                    f"metric names differ: missing {sorted(exp_names - got_names)}, "
                    f"unexpected {sorted(got_names - exp_names)}"
                )
            for metric in sorted(exp_names & got_names):
                try:
                    assert_matches(f"metrics[{metric!r}]", got["metrics"][metric], exp[metric], tol)
                except AssertionError as err:
                    errors.append(str(err))
        else:
            try:
                assert_matches(name, got[name], exp, tol)
            except AssertionError as err:
                errors.append(str(err))
    if "_recomputed_next_token_logprobs" in got:
        try:
            assert_matches(
                "next_token_logprobs(logits, input_ids)",
                got["_recomputed_next_token_logprobs"],
                case["inputs"]["next_token_logprobs"],
                tol,
            )
        except AssertionError as err:
            errors.append(str(err))
    if errors:
        pytest.fail(f"{case['case_id']} differs from NeMo RL:\n  " + "\n  ".join(errors))


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------

_CASES = load_cases()


@pytest.mark.parametrize("case", _CASES, ids=[c["case_id"] for c in _CASES])
def test_golden_case_matches_nemo_rl(case):
    check_case(case)


def test_golden_loader_finds_exactly_the_shipped_cases():
    shipped = load_cases([GOLDEN_DIR])
    ids = [c["case_id"] for c in shipped]
    assert len(shipped) == N_SHIPPED_CASES
    assert len(set(ids)) == len(ids), "case_id values must be unique"
    assert all(c["nemo_commit"] == "7ea279abfbeb698b092856d0dab61e7cf39bc909" for c in shipped)


def test_golden_env_dirs_are_loaded_and_unknown_function_fails(tmp_path, monkeypatch):
    extra_a, extra_b = tmp_path / "a", tmp_path / "b"
    extra_a.mkdir()
    extra_b.mkdir()
    shutil.copy(GOLDEN_DIR / "kl_k3_default_clamps.json", extra_a / "copy.json")
    unknown = json.loads((GOLDEN_DIR / "nll_basic.json").read_text())
    unknown.update(case_id="not_a_nemo_function", function="EntropyBonusLossFn")
    (extra_b / "unknown.json").write_text(json.dumps(unknown))
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(extra_a), str(extra_b)]))

    cases = load_cases()
    assert len(cases) == N_SHIPPED_CASES + 2
    by_path = {Path(c["_path"]).name: c for c in cases}
    check_case(by_path["copy.json"])  # an extra directory's case is checked like a shipped one
    with pytest.raises(pytest.fail.Exception, match="'EntropyBonusLossFn'"):
        check_case(by_path["unknown.json"])


def test_golden_unknown_config_key_fails():
    case = json.loads((GOLDEN_DIR / "pg_defaults.json").read_text())
    case["_path"] = "pg_defaults.json"
    case["config"]["entropy_coef"] = 0.01
    with pytest.raises(pytest.fail.Exception, match="entropy_coef"):
        check_case(case)


def test_golden_output_the_adapter_does_not_produce_fails():
    case = json.loads((GOLDEN_DIR / "dpo_defaults.json").read_text())
    case["_path"] = "dpo_defaults.json"
    case["outputs"]["grad_reference_policy_logprobs"] = [[0.0]]
    with pytest.raises(pytest.fail.Exception, match="grad_reference_policy_logprobs"):
        check_case(case)


def test_golden_mismatch_is_reported():
    case = json.loads((GOLDEN_DIR / "pg_defaults.json").read_text())
    case["_path"] = "pg_defaults.json"
    case["outputs"]["metrics"]["probs_ratio"] += 1e-3
    with pytest.raises(pytest.fail.Exception, match="probs_ratio"):
        check_case(case)
