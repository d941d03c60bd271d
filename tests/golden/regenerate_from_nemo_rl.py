"""Recompute the golden outputs with NeMo RL itself, e.g. at a newer NeMo RL commit.

This is the ONLY file in this repository that imports ``nemo_rl``, and it does so lazily inside
``main()``: it is not run in CI, is not collected by pytest (its name does not start with
``test_``), and nothing in ``rlref`` depends on it.

Who runs it: a maintainer who wants to check rlref against another NeMo RL commit. NeMo RL is not
on PyPI in usable form (the ``nemo-rl`` package there is a placeholder); install it from its git
repository with uv::

    git clone --recursive https://github.com/NVIDIA-NeMo/RL.git nemo-rl
    cd nemo-rl && git checkout <commit> && uv venv && uv sync
    uv run python /path/to/this/repo/tests/golden/regenerate_from_nemo_rl.py \\
        --cases /path/to/this/repo/tests/golden --out /tmp/golden-new --nemo-commit "$(git rev-parse HEAD)"

What it does: for every ``*.json`` case in ``--cases`` it keeps the recorded inputs, config and
tolerance, calls the real NeMo RL function named in ``case["function"]`` (see SCHEMA.md for the
call of each), and writes the case with fresh ``outputs`` and ``nemo_commit`` to ``--out``. Then
point the parity tests at the new set::

    NEMO_RL_GOLDEN_DIRS=/tmp/golden-new .venv/bin/pytest tests/test_golden_parity.py -k golden

(the new files carry the same ``case_id`` as the shipped ones; both sets are then checked). If the
outputs changed, NeMo RL's behaviour changed: read the diff, update rlref and SCHEMA.md, and only
then copy the files over ``tests/golden/`` and update PROVENANCE.md.

It does not draw new inputs; the shipped cases' inputs were drawn once, with the seed recorded in
each case. Function signatures are those of commit 7ea279abfbeb698b092856d0dab61e7cf39bc909; a
later commit that renames or re-signs a function will make this script fail loudly at that call,
which is the signal that SCHEMA.md needs revisiting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for golden_cases
from golden_cases import case_tensors  # noqa: E402

_NOT_DATA = {"input_ids", "logits", "next_token_logprobs", "global_valid_toks", "global_valid_seqs"}


def _encode(value):
    """Tensors / floats -> JSON numbers (exact doubles), non-finite -> "inf" / "-inf" / "nan"."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to(torch.float64).tolist()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _grad(t):
    return torch.zeros_like(t) if t.grad is None else t.grad


def _run_loss(nemo, case: dict, loss_fn, call_kwargs: dict | None = None) -> dict:
    x = case_tensors(case)
    curr = x["next_token_logprobs"].clone().requires_grad_(True)
    data = {k: v for k, v in x.items() if k not in _NOT_DATA and v is not None}
    if "curr_logprobs_unfiltered" in data:
        data["curr_logprobs_unfiltered"] = data["curr_logprobs_unfiltered"].clone().requires_grad_(True)
    loss, metrics = loss_fn(
        next_token_logprobs=curr,
        data=nemo["BatchedDataDict"](data),
        global_valid_seqs=x["global_valid_seqs"],
        global_valid_toks=x["global_valid_toks"],
        **(call_kwargs or {}),
    )
    loss.sum().backward()
    out = {"loss": loss, "metrics": metrics, "grad_next_token_logprobs": _grad(curr)}
    if "curr_logprobs_unfiltered" in data:
        out["grad_curr_logprobs_unfiltered"] = _grad(data["curr_logprobs_unfiltered"])
    return out


def _clipped_pg(nemo, case):
    lf = nemo["loss_functions"]
    return _run_loss(nemo, case, lf.ClippedPGLossFn(lf.ClippedPGLossConfig(**case["config"])))


def _dpo(nemo, case):
    lf = nemo["loss_functions"]
    return _run_loss(nemo, case, lf.DPOLossFn(lf.DPOLossConfig(**case["config"])))


def _nll(nemo, case):
    return _run_loss(nemo, case, nemo["loss_functions"].NLLLossFn(), dict(case["config"]))


def _calculate_kl(nemo, case):
    x = case_tensors(case)
    logprobs = x["logprobs"].clone().requires_grad_(True)
    weights = x.get("importance_sampling_weights")
    if weights is not None:
        weights = weights.clone().requires_grad_(True)
    kl = nemo["utils"].calculate_kl(
        logprobs=logprobs,
        logprobs_reference=x["logprobs_reference"],
        importance_sampling_weights=weights,
        **case["config"],
    )
    (kl * x["upstream_grad"]).sum().backward()
    out = {"kl": kl, "grad_logprobs": _grad(logprobs)}
    if weights is not None:
        out["grad_importance_sampling_weights"] = _grad(weights)
    return out


def _baseline_std(nemo, case):
    x = case_tensors(case)
    valid = x.get("valid_mask")
    baseline, std = nemo["utils"].calculate_baseline_and_std_per_prompt(
        x["prompt_ids"],
        x["rewards"],
        torch.ones_like(x["rewards"]) if valid is None else valid,
        leave_one_out_baseline=case["config"]["leave_one_out_baseline"],
        std_rewards=x.get("std_rewards"),
    )
    return {"baseline": baseline, "std": std}


def _estimator(nemo, case, cls_name: str, config_cls: str):
    ae = nemo["advantage_estimator"]
    cfg = case["config"]
    est_cfg = getattr(ae, config_cls)(**cfg["adv_estimator"])
    loss_cfg = nemo["loss_functions"].ClippedPGLossConfig(**cfg.get("loss_fn", {}))
    return getattr(ae, cls_name)(est_cfg, loss_cfg), case_tensors(case)


def _grpo(nemo, case):
    est, x = _estimator(nemo, case, "GRPOAdvantageEstimator", "AdvEstimatorConfig")
    adv = est.compute_advantage(x["prompt_ids"], x["rewards"], x["mask"])
    baseline, std = nemo["utils"].calculate_baseline_and_std_per_prompt(
        x["prompt_ids"],
        x["rewards"],
        torch.ones_like(x["rewards"]),
        leave_one_out_baseline=case["config"]["adv_estimator"]["use_leave_one_out_baseline"],
    )
    clip_cfg = {k: case["config"][k] for k in ("advantage_clip_low", "advantage_clip_high")}
    clipped = nemo["grpo"]._clip_grpo_advantages(adv.clone(), clip_cfg)
    return {"advantages": adv, "advantages_clipped": clipped, "baseline": baseline, "std": std}


def _gdpo(nemo, case):
    est, x = _estimator(nemo, case, "GDPOAdvantageEstimator", "AdvEstimatorConfig")
    batch = nemo["BatchedDataDict"](dict(x["reward_components"]))
    return {"advantages": est.compute_advantage(x["prompt_ids"], x["rewards"], x["mask"], batch)}


def _rpp(nemo, case):
    est, x = _estimator(nemo, case, "ReinforcePlusPlusAdvantageEstimator", "AdvEstimatorConfig")
    adv = est.compute_advantage(
        x["prompt_ids"], x["rewards"], x["mask"],
        logprobs_policy=x.get("logprobs_policy"), logprobs_reference=x.get("logprobs_reference"),
    )
    return {"advantages": adv}


def _raw_reward(nemo, case):
    est, x = _estimator(nemo, case, "RawRewardAdvantageEstimator", "GAEConfig")
    adv, _ = est.compute_advantage(x["prompt_ids"], x["rewards"], x["mask"])
    return {"advantages": adv}


def _gae(nemo, case):
    est, x = _estimator(nemo, case, "GeneralizedAdvantageEstimator", "GAEConfig")
    adv, returns = est.compute_advantage(
        x["prompt_ids"], x["rewards"], x["mask"], x["values"],
        logprobs_policy=x.get("logprobs_policy"), logprobs_reference=x.get("logprobs_reference"),
    )
    return {"advantages": adv, "returns": returns}


def _scale_rewards(nemo, case):
    x = case_tensors(case)
    batch = nemo["BatchedDataDict"]({"total_reward": x["rewards"].clone(),
                                     **{k: v.clone() for k, v in (x.get("reward_components") or {}).items()}})
    scaled = nemo["grpo"].scale_rewards(batch, dict(case["config"]["reward_scaling"]))
    return {k: scaled[k] for k in case["outputs"]}


RUNNERS = {
    "ClippedPGLossFn": _clipped_pg,
    "DPOLossFn": _dpo,
    "NLLLossFn": _nll,
    "calculate_kl": _calculate_kl,
    "calculate_baseline_and_std_per_prompt": _baseline_std,
    "GRPOAdvantageEstimator": _grpo,
    "GDPOAdvantageEstimator": _gdpo,
    "ReinforcePlusPlusAdvantageEstimator": _rpp,
    "RawRewardAdvantageEstimator": _raw_reward,
    "GeneralizedAdvantageEstimator": _gae,
    "scale_rewards": _scale_rewards,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=Path(__file__).parent, help="folder of case JSONs")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the regenerated cases")
    parser.add_argument("--nemo-commit", required=True, help="the NeMo RL commit being run (git rev-parse)")
    args = parser.parse_args(argv)

    # Lazy: only this script, and only when run by hand, imports NeMo RL.
    import nemo_rl.algorithms.advantage_estimator as advantage_estimator
    import nemo_rl.algorithms.grpo as grpo
    import nemo_rl.algorithms.loss.loss_functions as loss_functions
    import nemo_rl.algorithms.utils as utils
    from nemo_rl.distributed.batched_data_dict import BatchedDataDict

    nemo = {
        "advantage_estimator": advantage_estimator,
        "grpo": grpo,
        "loss_functions": loss_functions,
        "utils": utils,
        "BatchedDataDict": BatchedDataDict,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    paths = sorted(args.cases.glob("*.json"))
    if not paths:
        raise SystemExit(f"no *.json cases in {args.cases}")
    for path in paths:
        case = json.loads(path.read_text())
        function = case["function"]
        if function not in RUNNERS:
            raise SystemExit(f"{path.name}: no runner for function {function!r}")
        outputs = RUNNERS[function](nemo, case)
        missing = sorted(set(case["outputs"]) - set(outputs))
        if missing:
            raise SystemExit(f"{path.name}: NeMo RL call did not produce {missing}")
        case["outputs"] = _encode(outputs)
        case["nemo_commit"] = args.nemo_commit
        (args.out / path.name).write_text(json.dumps(case, separators=(",", ":")))
        print(f"{path.name}: {function} ok")
    print(f"wrote {len(paths)} cases to {args.out}")


if __name__ == "__main__":
    main()
