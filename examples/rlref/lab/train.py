"""Training loops of the lab: GRPO (plus GDPO / Reinforce++ advantages), DPO and SFT.

Each loop returns a :class:`History`: one dict of metrics per step, named as NeMo RL names them
where NeMo RL logs that quantity (``train/loss``, ``train/reward``, ``train/grad_norm``, ``train/lr``,
every ``ClippedPGLossFn`` metric under ``train/``, ``timing/train/<label>``,
``performance/tokens_per_sec``; nemo_rl/algorithms/grpo.py:2430-2451,3431-3500,
nemo_rl/algorithms/utils.py:588-913) and with the prefix ``lab/`` for what only the lab logs
(``lab/accuracy``, ``lab/entropy``, ``lab/reward/<name>``, ``lab/nonfinite``, ...).

The losses and advantages are the reference implementations in :mod:`rlref.losses` and
:mod:`rlref.advantages`; this module only does the bookkeeping around them: sampling, log-prob
passes, micro-batching with global normalisation, gradient clipping and the optimizer step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rlref import advantages as adv
from rlref.lab.policy import PolicyConfig, make_reference
from rlref.lab.rollout import (
    RolloutBatch,
    make_generation_model,
    pad_sequences,
    refit,
    rollout,
    sequence_logprobs,
    token_entropy,
)
from rlref.lab.tasks import DIGIT_IDS, EOS_ID, PAD_ID, VOCAB_SIZE, Problem, Task
from rlref.losses import (
    ClippedPGLoss,
    ClippedPGLossConfig,
    DPOLoss,
    DPOLossConfig,
    LossInputType,
    NLLLoss,
    next_token_logprobs,
)

__all__ = [
    "History", "GRPOConfig", "DPOConfig", "SFTConfig", "grpo_train", "dpo_train", "sft_train",
    "train_step", "accumulate_gradients", "make_preference_pairs", "make_sft_batch", "evaluate",
    "LabScale", "SMALL", "FULL", "lab_scale", "NONFINITE_MODES", "ADV_ESTIMATORS", "cpu_threads",
]

NONFINITE_MODES = ("skip", "stop", "step")
ADV_ESTIMATORS = ("grpo", "gdpo", "reinforce_plus_plus")
_TIMING_PREFIXES = ("timing/", "performance/")


# ==================================================================================================
# History
# ==================================================================================================


class History:
    """Per-step metrics of one run: ``history[i]`` is step ``i``'s dict ``{name: float}``.

    ``series(key)`` gives a float array over steps (NaN where a step did not log ``key``);
    ``to_frame()`` gives all columns as ``{name: array}`` (plus ``"step"``), ready for matplotlib;
    ``deterministic()`` drops the wall-clock keys (``timing/``, ``performance/``) that differ
    between otherwise identical runs. ``meta`` holds the config and why the run ended.
    """

    def __init__(self, steps: Sequence[Mapping[str, float]] | None = None, meta: dict | None = None) -> None:
        self.steps: list[dict[str, float]] = [dict(s) for s in (steps or [])]
        self.meta: dict[str, Any] = dict(meta or {})

    def append(self, metrics: Mapping[str, float]) -> None:
        self.steps.append(dict(metrics))

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i):
        return self.steps[i]

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.steps)

    def __repr__(self) -> str:
        return f"History({len(self)} steps, {len(self.keys())} keys, stopped={self.stopped_reason!r})"

    def keys(self) -> list[str]:
        """Every metric name logged at any step, sorted."""
        return sorted({k for s in self.steps for k in s})

    def series(self, key: str) -> np.ndarray:
        """``key`` at every step as a float64 array (NaN where missing)."""
        if not isinstance(key, str):
            raise TypeError(f"key must be a str, got {type(key).__name__}")
        if self.steps and not any(key in s for s in self.steps):
            raise KeyError(f"no step logged {key!r}; logged keys: {self.keys()}")
        return np.array([float(s.get(key, math.nan)) for s in self.steps], dtype=np.float64)

    def to_frame(self) -> dict[str, np.ndarray]:
        """All metrics as columns ``{name: array over steps}`` with a ``"step"`` column (no pandas needed)."""
        cols = {"step": np.arange(len(self.steps))}
        cols.update({k: self.series(k) for k in self.keys()})
        return cols

    def mean(self, key: str, first: int | None = None, last: int | None = None) -> float:
        """Mean of ``key`` over the first ``first`` or the last ``last`` steps (all steps if neither)."""
        if first is not None and last is not None:
            raise ValueError("pass first or last, not both")
        values = self.series(key)
        if first is not None:
            values = values[:first]
        elif last is not None:
            values = values[-last:]
        return float(np.nanmean(values)) if values.size else math.nan

    def deterministic(self) -> list[dict[str, float]]:
        """The steps without wall-clock keys; equal for two runs with the same seeds on CPU."""
        return [{k: v for k, v in s.items() if not k.startswith(_TIMING_PREFIXES)} for s in self.steps]

    @property
    def nonfinite_steps(self) -> list[int]:
        """Steps whose loss or gradient norm was NaN/Inf (``lab/nonfinite == 1``)."""
        return [i for i, s in enumerate(self.steps) if s.get("lab/nonfinite", 0.0) == 1.0]

    @property
    def stopped_reason(self) -> str | None:
        """``"max_num_steps"``, ``"callback"``, ``"nonfinite"`` or None while running."""
        return self.meta.get("stopped_reason")


# ==================================================================================================
# Shared training step
# ==================================================================================================


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")


def _check_number(name: str, value, *, positive: bool = False, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _reduce_metric(name: str, values: list[float]) -> float:
    """Combine one metric over micro-batches: min/max for extrema, sum otherwise.

    The losses divide by global counts, so the per-micro-batch values of a mean add up to the
    global-batch mean (NeMo RL sums micro-batch metrics the same way).
    """
    if name.endswith("_min"):
        return min(values)
    if name.endswith("_max"):
        return max(values)
    return float(sum(values))


def accumulate_gradients(policy: nn.Module, loss_fn, input_ids: torch.Tensor,
                         data: Mapping[str, torch.Tensor],
                         micro_batch_size: int | None = None, temperature: float = 1.0,
                         rows_per_sample: int = 1) -> dict[str, float]:
    """Forward/backward one global batch in micro-batches; gradients accumulate in ``.grad``.

    ``global_valid_seqs = sum(sample_mask)`` and ``global_valid_toks = sum(token_mask[:, 1:] *
    sample_mask)`` are counted over the whole global batch and passed to every micro-batch, so the
    summed micro-batch losses (and gradients) equal the full-batch ones (NeMo RL:
    nemo_rl/models/automodel/data.py:404-430). ``micro_batch_size`` counts samples; a DPO pair is
    ``rows_per_sample=2`` rows. The loss receives ``next_token_logprobs`` of ``logits / temperature``
    (``LossInputType.LOGPROB``) or the scaled ``logits`` (``LOGIT``).

    Returns the micro-batch metrics combined (sum; min/max for extrema), plus ``lab/entropy_sum``
    (exact entropy summed over the masked positions) and ``lab/num_microbatches``.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [B, S] tensor")
    for key in ("token_mask", "sample_mask"):
        if key not in data:
            raise ValueError(f"data is missing {key!r}")
    B = input_ids.shape[0]
    _check_positive_int("micro_batch_size", micro_batch_size, allow_none=True)
    rows = B if micro_batch_size is None else micro_batch_size * rows_per_sample
    if B % rows_per_sample != 0:
        raise ValueError(f"batch of {B} rows is not a whole number of {rows_per_sample}-row samples")
    temp = temperature if temperature and temperature > 0 else 1.0
    device = next(policy.parameters()).device
    input_ids = input_ids.to(device)
    data = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}
    sm = data["sample_mask"].float()
    mask = data["token_mask"][:, 1:].float() * sm[:, None]
    global_valid_seqs = sm.sum()
    global_valid_toks = mask.sum()
    input_type = getattr(loss_fn, "input_type", LossInputType.LOGPROB)
    collected: dict[str, list[float]] = {}
    entropy_sum = 0.0
    n_mb = 0
    for s in range(0, B, rows):
        sl = slice(s, s + rows)
        ids = input_ids[sl]
        mb = {k: v[sl] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else v
              for k, v in data.items()}
        logits = policy(ids).float() / temp
        if input_type == LossInputType.LOGIT or getattr(input_type, "name", None) == "LOGIT":
            loss, metrics = loss_fn(logits=logits, data=mb, global_valid_seqs=global_valid_seqs,
                                    global_valid_toks=global_valid_toks)
        else:
            curr = next_token_logprobs(logits, ids)
            loss, metrics = loss_fn(next_token_logprobs=curr, data=mb, global_valid_seqs=global_valid_seqs,
                                    global_valid_toks=global_valid_toks)
        loss.backward()
        with torch.no_grad():
            entropy_sum += float(token_entropy(logits.detach(), mask[sl]))
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                collected.setdefault(k, []).append(float(v))
        n_mb += 1
    out = {k: _reduce_metric(k, v) for k, v in collected.items()}
    out["global_valid_seqs"] = float(global_valid_seqs)
    out["global_valid_toks"] = float(global_valid_toks)
    out["lab/entropy_sum"] = entropy_sum
    out["lab/num_microbatches"] = float(n_mb)
    return out


def train_step(policy: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, input_ids: torch.Tensor,
               data: Mapping[str, torch.Tensor], *, train_global_batch_size: int | None = None,
               train_micro_batch_size: int | None = None, max_grad_norm: float | None = 1.0,
               temperature: float = 1.0, on_nonfinite: str = "skip", rows_per_sample: int = 1,
               scheduler=None) -> dict[str, float]:
    """One training step over a batch: global batches -> micro-batches -> clip -> optimizer step.

    The batch is split into global batches of ``train_global_batch_size`` samples (all of it when
    None); each gets one optimizer step (NeMo RL: ``policy.train_global_batch_size`` /
    ``train_micro_batch_size``; gradient accumulation follows from their ratio, there is no
    accumulation key). The gradient norm is the total 2-norm before clipping to ``max_grad_norm``
    (None: no clipping), as ``train/grad_norm``.

    Non-finite loss or gradient norm sets ``lab/nonfinite = 1`` and then, by ``on_nonfinite``:
    ``"skip"`` drops the update (zero grads, no optimizer step), ``"stop"`` drops it and asks the
    loop to stop (``lab/stop = 1``), ``"step"`` warns and steps anyway -- what NeMo RL's DTensor
    path does (``warn_if_inf_grad_norm``, then ``optimizer.step()``;
    nemo_rl/models/policy/workers/dtensor_policy_worker_v2.py:557-563). Skipping the step is not
    a NeMo RL feature.

    Returned metrics: the loss metrics (averaged over global batches; ``loss`` summed over
    micro-batches within one), ``grad_norm``, ``lr``, ``lab/nonfinite``, ``lab/skipped_step``,
    ``lab/stop``, ``lab/entropy`` (mean exact entropy over the masked positions).
    """
    if on_nonfinite not in NONFINITE_MODES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_MODES}, got {on_nonfinite!r}")
    _check_positive_int("train_global_batch_size", train_global_batch_size, allow_none=True)
    _check_number("max_grad_norm", max_grad_norm, positive=True, allow_none=True)
    B = input_ids.shape[0]
    n_samples = B // rows_per_sample
    gbs = n_samples if train_global_batch_size is None else min(train_global_batch_size, n_samples)
    params = [p for p in policy.parameters() if p.requires_grad]
    per_gb: list[dict[str, float]] = []
    policy.train()
    for start in range(0, n_samples, gbs):
        rs = slice(start * rows_per_sample, (start + gbs) * rows_per_sample)
        gb_data = {k: v[rs] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else v
                   for k, v in data.items()}
        optimizer.zero_grad(set_to_none=True)
        m = accumulate_gradients(policy, loss_fn, input_ids[rs], gb_data, train_micro_batch_size,
                                 temperature, rows_per_sample)
        clip = max_grad_norm if max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        loss_value = m.get("loss", math.nan)
        nonfinite = not (math.isfinite(grad_norm) and math.isfinite(loss_value))
        m["grad_norm"] = grad_norm
        m["lr"] = float(optimizer.param_groups[0]["lr"])
        m["lab/nonfinite"] = float(nonfinite)
        skip = nonfinite and on_nonfinite in ("skip", "stop")
        if nonfinite and on_nonfinite == "step":
            warnings.warn(f"non-finite loss ({loss_value}) or grad norm ({grad_norm}); stepping anyway "
                          "(on_nonfinite='step', like NeMo RL's DTensor path)", RuntimeWarning, stacklevel=2)
        if skip:
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        m["lab/skipped_step"] = float(skip)
        m["lab/stop"] = float(nonfinite and on_nonfinite == "stop")
        toks = m.pop("global_valid_toks")
        m["lab/entropy"] = m.pop("lab/entropy_sum") / toks if toks > 0 else math.nan
        m["global_valid_toks"] = toks
        per_gb.append(m)
        if m["lab/stop"]:
            break
    optimizer.zero_grad(set_to_none=True)
    return _combine_global_batches(per_gb)


def _combine_global_batches(per_gb: list[dict[str, float]]) -> dict[str, float]:
    """One step's metrics from its global batches: flags and counts max/sum, extrema min/max, else mean."""
    out = {}
    for k in per_gb[0]:
        vals = [g[k] for g in per_gb if k in g]
        if k in ("lab/nonfinite", "lab/skipped_step", "lab/stop"):
            out[k] = float(max(vals))
        elif k.endswith("_min"):
            out[k] = min(vals)
        elif k.endswith("_max"):
            out[k] = max(vals)
        elif k == "lab/num_microbatches":
            out[k] = float(sum(vals))
        else:
            out[k] = float(np.mean(vals))
    out["lab/optimizer_steps"] = float(len(per_gb))
    return out


def _make_optimizer(policy: nn.Module, lr: float, weight_decay: float, warmup: int):
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr,
                            weight_decay=weight_decay)
    sched = None
    if warmup > 0:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    return opt, sched


@contextlib.contextmanager
def cpu_threads(n: int | None, device: torch.device | str = "cpu"):
    """Run the block with ``torch.set_num_threads(n)`` on a CPU device, then restore the old count.

    The lab's matrices are tiny: intra-op threads cost more than they save, and on a busy machine
    they spin (in one measurement on a loaded 2-core machine, a SMALL GRPO run took 35 s of CPU time
    with 2 threads and 3.4 s with 1, with identical results). ``n=None`` or a GPU device leaves the
    setting alone.
    """
    if n is None or torch.device(device).type != "cpu":
        yield
        return
    _check_positive_int("cpu_threads", n)
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _device_of(policy: nn.Module, device) -> torch.device:
    if device is None:
        return next(policy.parameters()).device
    return torch.device(device)


# ==================================================================================================
# GRPO
# ==================================================================================================


@dataclass
class GRPOConfig:
    """Knobs of :func:`grpo_train`, named after NeMo RL's config keys where one exists.

    NeMo RL keys (``GRPOConfig``, nemo_rl/algorithms/grpo.py:241-309): ``grpo.num_prompts_per_step``,
    ``grpo.num_generations_per_prompt``, ``grpo.max_num_steps``, ``grpo.normalize_rewards``,
    ``grpo.use_leave_one_out_baseline``, ``grpo.use_dynamic_sampling``,
    ``grpo.dynamic_sampling_max_gen_batches``, ``grpo.advantage_clip_low`` / ``advantage_clip_high``,
    ``grpo.seed``; ``grpo.adv_estimator.{name, reward_weights, minus_baseline}``
    (nemo_rl/algorithms/advantage_estimator.py:44-54); ``policy.max_grad_norm``,
    ``policy.train_global_batch_size``, ``policy.train_micro_batch_size``,
    ``policy.logprob_batch_size``; ``loss_fn.*`` (:class:`rlref.losses.ClippedPGLossConfig`).
    ``lr`` and ``weight_decay`` stand for the AdamW settings under ``policy.optimizer``;
    ``lr_warmup_steps`` for a linear warm-up scheduler. ``temperature`` is the sampling temperature.

    Lab-only: ``adv_estimator`` (one of ``ADV_ESTIMATORS``; NeMo RL's ``adv_estimator.name``),
    ``generation_dtype`` (None = the policy's dtype; ``torch.bfloat16`` makes generation log-probs
    differ from training ones), ``on_nonfinite`` (see :func:`train_step`), ``device``,
    ``cpu_threads`` (see :func:`cpu_threads`). The default ``lr`` (3e-3) suits the tiny model;
    grpo_math_1B uses 5e-6 for a 1B model (examples/configs/grpo_math_1B.yaml:344-350).
    ``loss_fn`` may be a :class:`ClippedPGLossConfig`, a dict of its keys, or any object following
    the LossFunction protocol (``loss_type``, ``input_type``, keyword call returning
    ``(loss, metrics)``).
    """

    num_prompts_per_step: int = 16
    num_generations_per_prompt: int = 8
    max_num_steps: int = 40
    normalize_rewards: bool = True
    use_leave_one_out_baseline: bool = True
    use_dynamic_sampling: bool = False
    dynamic_sampling_max_gen_batches: int = 10
    advantage_clip_low: float | None = None
    advantage_clip_high: float | None = None
    adv_estimator: str = "grpo"
    reward_weights: Sequence[float] | None = None
    minus_baseline: bool = True
    loss_fn: Any = field(default_factory=ClippedPGLossConfig)
    max_grad_norm: float | None = 1.0
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_warmup_steps: int = 0
    train_global_batch_size: int | None = None
    train_micro_batch_size: int | None = None
    logprob_batch_size: int | None = None
    temperature: float = 1.0
    generation_dtype: torch.dtype | None = None
    on_nonfinite: str = "skip"
    seed: int = 0
    device: str | None = None
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("num_prompts_per_step", "num_generations_per_prompt", "max_num_steps",
                     "dynamic_sampling_max_gen_batches"):
            _check_positive_int(name, getattr(self, name))
        for name in ("train_global_batch_size", "train_micro_batch_size", "logprob_batch_size"):
            _check_positive_int(name, getattr(self, name), allow_none=True)
        for name in ("normalize_rewards", "use_leave_one_out_baseline", "use_dynamic_sampling",
                     "minus_baseline"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.adv_estimator not in ADV_ESTIMATORS:
            raise ValueError(f"adv_estimator must be one of {ADV_ESTIMATORS}, got {self.adv_estimator!r}")
        if self.on_nonfinite not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_MODES}, got {self.on_nonfinite!r}")
        _check_number("lr", self.lr, positive=True)
        _check_number("weight_decay", self.weight_decay)
        _check_number("max_grad_norm", self.max_grad_norm, positive=True, allow_none=True)
        _check_number("advantage_clip_low", self.advantage_clip_low, allow_none=True)
        _check_number("advantage_clip_high", self.advantage_clip_high, allow_none=True)
        if isinstance(self.lr_warmup_steps, bool) or not isinstance(self.lr_warmup_steps, int) \
                or self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be an int >= 0, got {self.lr_warmup_steps!r}")
        _check_number("temperature", self.temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for GRPO sampling, got {self.temperature!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.generation_dtype is not None and not (
            isinstance(self.generation_dtype, torch.dtype) and self.generation_dtype.is_floating_point
        ):
            raise TypeError(
                f"generation_dtype must be a floating torch.dtype or None, got {self.generation_dtype!r}"
            )
        _check_positive_int("cpu_threads", self.cpu_threads, allow_none=True)
        if self.reward_weights is not None and self.adv_estimator != "gdpo":
            raise ValueError("reward_weights only applies to adv_estimator='gdpo' (as in NeMo RL)")

    def replace(self, **changes) -> GRPOConfig:
        """A copy with some keys changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _make_loss(spec, default_cls, config_cls):
    if spec is None:
        return default_cls()
    if isinstance(spec, (config_cls, Mapping)):
        return default_cls(spec)
    if callable(spec) and hasattr(spec, "loss_type") and hasattr(spec, "input_type"):
        return spec
    raise TypeError(
        f"loss_fn must be a {config_cls.__name__}, a dict of its keys, or an object with loss_type, "
        f"input_type and a keyword __call__; got {type(spec).__name__}"
    )


PromptSource = Callable[[int, History], "Task | Sequence[Problem]"]


def _draw_problems(task, prompt_sampler, step, history, n, gen) -> list[Problem]:
    source = task if prompt_sampler is None else prompt_sampler(step, history)
    if isinstance(source, Task):
        return source.sample_prompts(n, gen)
    if isinstance(source, Sequence) and source and all(isinstance(p, Problem) for p in source):
        return list(source)
    raise TypeError("prompt_sampler(step, history) must return a Task or a non-empty list of Problems, "
                    f"got {type(source).__name__}")


def _varying_blocks(batch: RolloutBatch, G: int) -> torch.Tensor:
    """Row mask: True for the rows of problems whose ``G`` sampled rewards are not all equal."""
    r = batch.rewards.reshape(-1, G)
    keep = (r != r[:, :1]).any(dim=1)
    return keep.repeat_interleave(G)


def _group_std(batch: RolloutBatch) -> torch.Tensor:
    """Plain (not leave-one-out) std of each row's prompt group: 0 iff the group's rewards are equal."""
    _, std = adv.baseline_and_std_per_prompt(batch.prompt_ids, batch.rewards, leave_one_out_baseline=False)
    return std


def _record_step(history: History, metrics: dict, nonfinite_stop: bool, callback, step: int,
                 policy: nn.Module) -> bool:
    """Append the step's metrics; True (with ``history.meta["stopped_reason"]`` set) when training stops."""
    history.append(metrics)
    if nonfinite_stop:
        history.meta["stopped_reason"] = "nonfinite"
    elif callback is not None and callback(step, metrics, policy):
        history.meta["stopped_reason"] = "callback"
    else:
        return False
    return True


def _grpo_advantages(cfg: GRPOConfig, loss_cfg, batch: RolloutBatch, mask: torch.Tensor,
                     prev: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The step's advantages by ``cfg.adv_estimator``, then ``clip_advantages``."""
    if cfg.adv_estimator == "grpo":
        a = adv.grpo_advantages(batch.prompt_ids, batch.rewards, mask,
                                normalize_rewards=cfg.normalize_rewards,
                                use_leave_one_out_baseline=cfg.use_leave_one_out_baseline)
    elif cfg.adv_estimator == "gdpo":
        weights = None if cfg.reward_weights is None else list(cfg.reward_weights)
        a = adv.gdpo_advantages(batch.prompt_ids, batch.reward_components, mask,
                                normalize_rewards=cfg.normalize_rewards,
                                use_leave_one_out_baseline=cfg.use_leave_one_out_baseline,
                                reward_weights=weights)
    else:
        a = adv.reinforce_plus_plus_advantages(
            batch.prompt_ids, batch.rewards, mask, minus_baseline=cfg.minus_baseline,
            use_kl_in_reward=bool(getattr(loss_cfg, "use_kl_in_reward", False)),
            reference_policy_kl_penalty=float(getattr(loss_cfg, "reference_policy_kl_penalty", 0.01)),
            reference_policy_kl_type=getattr(loss_cfg, "reference_policy_kl_type", "k3"),
            logprobs_policy=prev, logprobs_reference=ref)
    return adv.clip_advantages(a, cfg.advantage_clip_low, cfg.advantage_clip_high)


def _grpo_step_metrics(metrics: dict, batch: RolloutBatch, a: torch.Tensor, mask: torch.Tensor,
                       tm: Mapping[str, float], step: int) -> int:
    """Add a GRPO step's batch and train-step metrics to ``metrics``; returns the step's token count."""
    valid = mask[:, 1:] > 0
    av = a[:, 1:][valid]
    n_tokens = int((batch.prompt_lengths + batch.response_lengths).sum())
    metrics.update({f"train/{k}": v for k, v in tm.items() if not k.startswith("lab/")})
    metrics.update({k: v for k, v in tm.items() if k.startswith("lab/")})
    metrics.update({
        "train/reward": float(batch.rewards.float().mean()),
        "train/advantages/mean": float(av.mean()) if av.numel() else 0.0,
        "train/advantages/max": float(av.max()) if av.numel() else 0.0,
        "train/advantages/min": float(av.min()) if av.numel() else 0.0,
        "train/mean_prompt_length": float(batch.prompt_lengths.float().mean()),
        "train/total_num_tokens": float(n_tokens),
        "train/mean_gen_tokens_per_sample": float(batch.response_lengths.float().mean()),
        "train/max_gen_tokens_per_sample": float(batch.response_lengths.max()),
        "train/natural_termination_rate": float((~batch.truncated).float().mean()),
        "train/truncation_rate": float(batch.truncated.float().mean()),
        "lab/accuracy": float(batch.correct.float().mean()),
        "lab/zero_std_frac": float((_group_std(batch) == 0).float().mean()),
        "lab/step": float(step),
    })
    for name, values in batch.reward_components.items():
        metrics[f"lab/{name}"] = float(values.float().mean())
    return n_tokens


def grpo_train(policy: nn.Module, task: Task | None, config: GRPOConfig | None = None, *,
               prompt_sampler: PromptSource | None = None,
               callback: Callable[[int, dict, nn.Module], bool | None] | None = None,
               reference: nn.Module | None = None, **overrides) -> History:
    """Train ``policy`` with GRPO on ``task`` (or on what ``prompt_sampler`` hands out) and return a History.

    One step, in NeMo RL's order (nemo_rl/algorithms/grpo.py:3024-3337): draw
    ``num_prompts_per_step`` problems -> generate ``num_generations_per_prompt`` responses each ->
    rewards (sum of ``reward/<name>`` components) -> [dynamic sampling: drop the problems whose
    ``num_generations_per_prompt`` rewards are all equal, generate more until
    ``num_prompts_per_step * num_generations_per_prompt`` samples survive, keep exactly that many]
    -> ``prev_logprobs`` (the policy before the update) and ``reference_policy_logprobs`` (the frozen
    ``reference``, a deep copy of the initial policy by default) -> advantages (``adv_estimator``)
    -> ``clip_advantages`` -> train step(s) with ``loss_fn`` (:func:`train_step`).

    Hooks:
      - ``prompt_sampler(step, history)`` returns the step's Task (``num_prompts_per_step`` problems
        are drawn from it) or the list of Problems itself: a curriculum changes difficulty here.
        NeMo RL has no curriculum scheduler; its extension point is ``data.custom_dataloader``.
      - ``callback(step, metrics, policy)`` runs after each step; returning True stops the run.

    ``config`` fields can also be given as keyword ``overrides``. Seeds: problems are drawn from
    ``torch.Generator().manual_seed(seed)``, sampling noise from ``manual_seed(seed + 1)``; the
    policy's initial weights are the caller's. On CPU the loop runs with ``cpu_threads`` threads
    (see :func:`cpu_threads`).

    Logged per step (besides the loss metrics under ``train/``): ``train/reward``,
    ``train/advantages/{mean,max,min}`` (over response tokens), ``train/grad_norm``, ``train/lr``,
    ``train/global_valid_seqs``, ``train/global_valid_toks``, ``train/mean_prompt_length``,
    ``train/total_num_tokens``, ``train/{mean,max}_gen_tokens_per_sample``,
    ``train/natural_termination_rate``, ``train/truncation_rate``, ``timing/train/{generation,
    policy_and_reference_logprobs, advantage_calculation, policy_training, total_step_time}`` (and
    ``dynamic_sampling``), ``performance/tokens_per_sec`` (prompt + response tokens / step time),
    ``performance/generation_tokens_per_sec``; lab-only: ``lab/accuracy`` (task correctness),
    ``lab/reward/<name>`` (mean of each component), ``lab/entropy`` (exact mean token entropy),
    ``lab/zero_std_frac`` (rows whose prompt group has equal rewards), ``lab/nonfinite``,
    ``lab/skipped_step``, ``lab/optimizer_steps``, ``lab/num_microbatches``,
    ``lab/dynamic_sampling/gen_batches``.

    NeMo RL: ``grpo_train`` (nemo_rl/algorithms/grpo.py:2682).
    """
    if config is None:
        config = GRPOConfig(**overrides)
    elif overrides:
        config = config.replace(**overrides)
    if not isinstance(config, GRPOConfig):
        raise TypeError(f"config must be a GRPOConfig, got {type(config).__name__}")
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    with cpu_threads(config.cpu_threads, _device_of(policy, config.device)):
        return _grpo_train(policy, task, config, prompt_sampler=prompt_sampler, callback=callback,
                           reference=reference)


def _grpo_train(policy: nn.Module, task: Task | None, cfg: GRPOConfig, *, prompt_sampler, callback,
                reference) -> History:
    """The GRPO loop behind :func:`grpo_train` (config resolved, threads already set)."""
    if task is None and prompt_sampler is None:
        raise ValueError("give a task or a prompt_sampler")
    if task is not None and not isinstance(task, Task):
        raise TypeError(f"task must be a rlref.lab Task (from make_task), got {type(task).__name__}")
    device = _device_of(policy, cfg.device)
    policy.to(device)
    loss_fn = _make_loss(cfg.loss_fn, ClippedPGLoss, ClippedPGLossConfig)
    loss_cfg = getattr(loss_fn, "config", None)
    if reference is None:
        reference = make_reference(policy)
    reference.to(device)
    gen_model = make_generation_model(policy, cfg.generation_dtype)
    optimizer, scheduler = _make_optimizer(policy, cfg.lr, cfg.weight_decay, cfg.lr_warmup_steps)
    prompt_gen = torch.Generator().manual_seed(cfg.seed)
    sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
    G = cfg.num_generations_per_prompt
    target = cfg.num_prompts_per_step * G
    history = History(meta={"config": cfg, "algorithm": "grpo", "loss_fn": repr(loss_fn)})
    for step in range(cfg.max_num_steps):
        metrics: dict[str, float] = {}
        t_step = time.perf_counter()
        gen_time = ds_time = 0.0
        kept: list[RolloutBatch] = []
        n_kept = 0
        gen_batches = 0
        first_batch = None
        while True:
            problems = _draw_problems(task, prompt_sampler, step, history, cfg.num_prompts_per_step,
                                      prompt_gen)
            t0 = time.perf_counter()
            refit(gen_model, policy)
            batch = rollout(policy, problems, G, cfg.temperature, sample_gen, generation_model=gen_model)
            gen_time += time.perf_counter() - t0
            gen_batches += 1
            first_batch = first_batch or batch
            if not cfg.use_dynamic_sampling:
                kept, n_kept = [batch], len(batch)
                break
            t0 = time.perf_counter()
            keep = _varying_blocks(batch, G)
            if bool(keep.any()):
                kept.append(batch.select(keep))
                n_kept += int(keep.sum())
            ds_time += time.perf_counter() - t0
            if n_kept >= target:
                break
            if gen_batches > cfg.dynamic_sampling_max_gen_batches:  # NeMo RL allows max + 1 (grpo.py:1803)
                raise RuntimeError(
                    f"dynamic sampling kept {n_kept} of the {target} samples needed after "
                    f"{gen_batches} generation batches (dynamic_sampling_max_gen_batches); the task is "
                    "too easy or too hard for the policy"
                )
        batch = RolloutBatch.cat(kept) if len(kept) > 1 else kept[0]
        if cfg.use_dynamic_sampling:
            batch = batch.select(torch.arange(target))
            metrics["timing/train/dynamic_sampling"] = ds_time
            metrics["lab/dynamic_sampling/gen_batches"] = float(gen_batches)
            metrics["lab/dynamic_sampling/filtered_reward"] = float(first_batch.rewards.float().mean())

        t0 = time.perf_counter()
        prev = sequence_logprobs(policy, batch.input_ids, cfg.temperature, cfg.logprob_batch_size)
        ref = sequence_logprobs(reference, batch.input_ids, cfg.temperature, cfg.logprob_batch_size)
        metrics["timing/train/policy_and_reference_logprobs"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        mask = batch.token_mask * batch.sample_mask[:, None]
        a = _grpo_advantages(cfg, loss_cfg, batch, mask, prev, ref)
        metrics["timing/train/advantage_calculation"] = time.perf_counter() - t0

        data = batch.data()
        data.update(advantages=a, prev_logprobs=prev, reference_policy_logprobs=ref)
        t0 = time.perf_counter()
        tm = train_step(policy, optimizer, loss_fn, batch.input_ids, data,
                        train_global_batch_size=cfg.train_global_batch_size,
                        train_micro_batch_size=cfg.train_micro_batch_size, max_grad_norm=cfg.max_grad_norm,
                        temperature=cfg.temperature, on_nonfinite=cfg.on_nonfinite, scheduler=scheduler)
        metrics["timing/train/policy_training"] = time.perf_counter() - t0
        metrics["timing/train/generation"] = gen_time
        total = time.perf_counter() - t_step
        metrics["timing/train/total_step_time"] = total

        n_tokens = _grpo_step_metrics(metrics, batch, a, mask, tm, step)
        metrics.update({
            "performance/tokens_per_sec": n_tokens / total if total > 0 else math.nan,
            "performance/generation_tokens_per_sec": n_tokens / gen_time if gen_time > 0 else math.nan,
        })
        if _record_step(history, metrics, tm["lab/stop"], callback, step, policy):
            break
    else:
        history.meta["stopped_reason"] = "max_num_steps"
    return history


# ==================================================================================================
# Supervised data: SFT batches and DPO preference pairs
# ==================================================================================================


def _corrupt(problem: Problem, gen: torch.Generator) -> tuple[int, ...]:
    """A wrong answer of the same length: one position changed to another digit (re-drawn until wrong)."""
    answer = list(problem.answer)
    for _ in range(100):
        pos = int(torch.randint(0, len(answer), (1,), generator=gen))
        digit = DIGIT_IDS[int(torch.randint(0, 10, (1,), generator=gen))]
        cand = answer.copy()
        cand[pos] = digit
        if not problem.task.is_correct(problem, cand):
            return tuple(cand)
    raise RuntimeError(f"could not corrupt the answer of {problem.text()}")


def _sequences(problems: Sequence[Problem], answers: Sequence[Sequence[int]]):
    seqs = [list(p.prompt) + list(a) + [EOS_ID] for p, a in zip(problems, answers, strict=False)]
    ids = pad_sequences(seqs)
    token_mask = torch.zeros(ids.shape, dtype=torch.float32)
    for i, (p, a) in enumerate(zip(problems, answers, strict=False)):
        token_mask[i, len(p.prompt) : len(p.prompt) + len(a) + 1] = 1.0
    return ids, token_mask


def make_sft_batch(problems: Sequence[Problem]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(input_ids, data)`` for SFT: prompt + answer + EOS, ``token_mask`` 1 on answer and EOS only
    (prompt masking, like NeMo RL's ``roles_to_train_on=["assistant"]``)."""
    if not problems:
        raise ValueError("problems is empty")
    ids, tm = _sequences(problems, [p.answer for p in problems])
    return ids, {"token_mask": tm, "sample_mask": torch.ones(len(problems))}


def make_preference_pairs(problems: Sequence[Problem], generator: torch.Generator | None = None):
    """``(input_ids [2P, S], data)`` with rows interleaved chosen (2i) / rejected (2i+1).

    Chosen = the reference answer + EOS; rejected = the answer with one digit changed so that it is
    wrong + EOS. ``data`` has ``token_mask`` (1 on the response and EOS) and ``sample_mask``; the
    trainer adds the pre-rolled ``reference_policy_logprobs`` (NeMo RL's DPO layout,
    nemo_rl/algorithms/loss/loss_functions.py:877-879).
    """
    if not problems:
        raise ValueError("problems is empty")
    rows, answers = [], []
    for p in problems:
        rows += [p, p]
        answers += [p.answer, _corrupt(p, generator)]
    ids, tm = _sequences(rows, answers)
    return ids, {"token_mask": tm, "sample_mask": torch.ones(len(rows))}


def _rolled_logprobs(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """DPO's pre-rolled reference log-probs: column t = log p(token t+1), last column 0."""
    lp = sequence_logprobs(model, input_ids)
    return torch.cat([lp[:, 1:], torch.zeros_like(lp[:, :1])], dim=1)


@torch.no_grad()
def evaluate(policy: nn.Module, problems: Sequence[Problem], temperature: float = 0.0,
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Accuracy and mean reward components of one response per problem (greedy by default).

    Returns ``{"accuracy": ..., "reward/<name>": ...}``.
    """
    batch = rollout(policy, problems, 1, temperature, generator)
    out = {"accuracy": float(batch.correct.float().mean())}
    out.update({k: float(v.float().mean()) for k, v in batch.reward_components.items()})
    return out


@dataclass
class SFTConfig:
    """Knobs of :func:`sft_train`. NeMo RL keys: ``sft.max_num_steps``, ``sft.seed``,
    ``policy.train_global_batch_size``, ``policy.train_micro_batch_size``, ``policy.max_grad_norm``
    (nemo_rl/algorithms/sft.py:80-92). ``lr``/``weight_decay`` stand for the AdamW settings.
    Lab-only: ``eval_period`` (0 = never) and ``eval_num_prompts`` for a greedy ``lab/eval_accuracy``
    (on held-out prompts when the task has a held-out split, else on training prompts)."""

    max_num_steps: int = 60
    train_global_batch_size: int = 32
    train_micro_batch_size: int | None = None
    max_grad_norm: float | None = 1.0
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_warmup_steps: int = 0
    eval_period: int = 0
    eval_num_prompts: int = 64
    on_nonfinite: str = "skip"
    seed: int = 0
    device: str | None = None
    cpu_threads: int | None = 1

    def __post_init__(self) -> None:
        _check_positive_int("max_num_steps", self.max_num_steps)
        _check_positive_int("train_global_batch_size", self.train_global_batch_size)
        _check_positive_int("train_micro_batch_size", self.train_micro_batch_size, allow_none=True)
        _check_positive_int("eval_num_prompts", self.eval_num_prompts)
        _check_number("lr", self.lr, positive=True)
        _check_number("max_grad_norm", self.max_grad_norm, positive=True, allow_none=True)
        if isinstance(self.eval_period, bool) or not isinstance(self.eval_period, int) \
                or self.eval_period < 0:
            raise ValueError(f"eval_period must be an int >= 0, got {self.eval_period!r}")
        if self.on_nonfinite not in NONFINITE_MODES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_MODES}, got {self.on_nonfinite!r}")
        _check_positive_int("cpu_threads", self.cpu_threads, allow_none=True)


@dataclass
class DPOConfig(SFTConfig):
    """Knobs of :func:`dpo_train`: the SFT knobs (``train_global_batch_size`` counts *pairs*, as in
    NeMo RL's DPO, examples/configs/dpo.yaml:44-47) plus ``loss_fn``: a
    :class:`rlref.losses.DPOLossConfig` (NeMo RL's ``dpo.*`` keys: ``reference_policy_kl_penalty``
    = beta, ``preference_loss_weight``, ``sft_loss_weight``, ...), a dict, or a loss object."""

    loss_fn: Any = field(default_factory=DPOLossConfig)


def _supervised_loop(policy, task, cfg, algorithm, loss_fn, make_batch, callback, reference=None):
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a rlref.lab Task (from make_task), got {type(task).__name__}")
    device = _device_of(policy, cfg.device)
    with cpu_threads(cfg.cpu_threads, device):
        return _supervised_steps(policy, task, cfg, algorithm, loss_fn, make_batch, callback, reference,
                                 device)


def _supervised_steps(policy, task, cfg, algorithm, loss_fn, make_batch, callback, reference, device):
    policy.to(device)
    optimizer, scheduler = _make_optimizer(policy, cfg.lr, cfg.weight_decay, cfg.lr_warmup_steps)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 10_000)
    eval_split = "held_out" if task.held_out_fraction > 0 else "train"
    eval_problems = task.sample_prompts(cfg.eval_num_prompts, eval_gen, split=eval_split)
    history = History(meta={"config": cfg, "algorithm": algorithm, "loss_fn": repr(loss_fn)})
    rows_per_sample = 2 if algorithm == "dpo" else 1
    for step in range(cfg.max_num_steps):
        t_step = time.perf_counter()
        problems = task.sample_prompts(cfg.train_global_batch_size, data_gen)
        ids, data = make_batch(problems, data_gen)
        metrics: dict[str, float] = {}
        if reference is not None:
            t0 = time.perf_counter()
            data["reference_policy_logprobs"] = _rolled_logprobs(reference, ids.to(device))
            metrics["timing/train/policy_and_reference_logprobs"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        tm = train_step(policy, optimizer, loss_fn, ids.to(device), data,
                        train_micro_batch_size=cfg.train_micro_batch_size, max_grad_norm=cfg.max_grad_norm,
                        on_nonfinite=cfg.on_nonfinite, rows_per_sample=rows_per_sample, scheduler=scheduler)
        metrics["timing/train/policy_training"] = time.perf_counter() - t0
        metrics.update({f"train/{k}": v for k, v in tm.items() if not k.startswith("lab/")})
        metrics.update({k: v for k, v in tm.items() if k.startswith("lab/")})
        metrics["lab/step"] = float(step)
        if cfg.eval_period and (step % cfg.eval_period == 0 or step == cfg.max_num_steps - 1):
            metrics["lab/eval_accuracy"] = evaluate(policy, eval_problems)["accuracy"]
        total = time.perf_counter() - t_step
        metrics["timing/train/total_step_time"] = total
        n_tokens = float(int((ids != PAD_ID).sum()))
        metrics["performance/tokens_per_sec"] = n_tokens / total if total > 0 else math.nan
        metrics["lab/num_response_tokens"] = float(data["token_mask"].sum())
        if _record_step(history, metrics, tm["lab/stop"], callback, step, policy):
            break
    else:
        history.meta["stopped_reason"] = "max_num_steps"
    return history


def sft_train(policy: nn.Module, task: Task, config: SFTConfig | None = None, *,
              callback: Callable[[int, dict, nn.Module], bool | None] | None = None, **overrides) -> History:
    """Supervised fine-tuning on ``task``'s reference answers with :class:`rlref.losses.NLLLoss`.

    Each step draws ``train_global_batch_size`` fresh problems (prompt masked out of the loss).
    Logs ``train/loss``, ``train/num_unmasked_tokens``, ``train/num_valid_samples``,
    ``train/grad_norm``, ``train/lr``, ``timing/train/*`` and, every ``eval_period`` steps, the greedy
    ``lab/eval_accuracy`` on a fixed held-out set. NeMo RL: ``NLLLossFn`` in the SFT loop
    (nemo_rl/algorithms/sft.py).
    """
    cfg = config if config is not None else SFTConfig(**overrides)
    if config is not None and overrides:
        cfg = dataclasses.replace(config, **overrides)
    if not isinstance(cfg, SFTConfig):
        raise TypeError(f"config must be an SFTConfig, got {type(cfg).__name__}")
    return _supervised_loop(policy, task, cfg, "sft", NLLLoss(), lambda ps, g: make_sft_batch(ps), callback)


def dpo_train(policy: nn.Module, task: Task, config: DPOConfig | None = None, *,
              callback: Callable[[int, dict, nn.Module], bool | None] | None = None,
              reference: nn.Module | None = None, **overrides) -> History:
    """DPO on preference pairs from ``task`` (chosen = correct answer, rejected = corrupted answer).

    The reference is a frozen deep copy of the initial policy unless given. Logs the DPO metrics
    under ``train/`` (``loss``, ``sft_loss``, ``preference_loss``, ``accuracy``,
    ``rewards_chosen_mean``, ``rewards_rejected_mean``, ``num_valid_samples``), ``train/grad_norm``,
    ``train/lr``, ``timing/train/*`` and the greedy ``lab/eval_accuracy`` every ``eval_period`` steps.
    NeMo RL: ``DPOLossFn`` in the DPO loop (nemo_rl/algorithms/dpo.py).
    """
    cfg = config if config is not None else DPOConfig(**overrides)
    if config is not None and overrides:
        cfg = dataclasses.replace(config, **overrides)
    if not isinstance(cfg, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(cfg).__name__}")
    loss_fn = _make_loss(cfg.loss_fn, DPOLoss, DPOLossConfig)
    if reference is None:
        reference = make_reference(policy)
    reference.to(_device_of(policy, cfg.device))
    return _supervised_loop(policy, task, cfg, "dpo", loss_fn, make_preference_pairs, callback, reference)


# ==================================================================================================
# Scale presets
# ==================================================================================================


@dataclass(frozen=True)
class LabScale:
    """Sizes for one scale: the policy, the GRPO batch, the number of steps and of seeds."""

    policy: PolicyConfig
    num_prompts_per_step: int
    num_generations_per_prompt: int
    max_num_steps: int
    num_seeds: int

    def grpo_config(self, **overrides) -> GRPOConfig:
        """A :class:`GRPOConfig` with this scale's batch and step counts (``overrides`` win)."""
        base = dict(num_prompts_per_step=self.num_prompts_per_step,
                    num_generations_per_prompt=self.num_generations_per_prompt,
                    max_num_steps=self.max_num_steps)
        base.update(overrides)
        return GRPOConfig(**base)


#: CPU scale: a 0.1M-parameter model; a GRPO run on ``greater`` learns in a few seconds.
SMALL = LabScale(PolicyConfig(VOCAB_SIZE, d_model=64, n_layers=2, n_heads=4, max_seq_len=32),
                 num_prompts_per_step=16, num_generations_per_prompt=8, max_num_steps=40, num_seeds=3)
#: GPU scale: a 3.2M-parameter model, 4x the batch, 5x the steps and more seeds.
FULL = LabScale(PolicyConfig(VOCAB_SIZE, d_model=256, n_layers=4, n_heads=8, max_seq_len=64),
                num_prompts_per_step=64, num_generations_per_prompt=16, max_num_steps=200, num_seeds=8)


def lab_scale(scale: str) -> LabScale:
    """``SMALL`` for ``"small"`` and ``FULL`` for ``"full"`` (pass ``run.scale`` from rlref.notebook)."""
    if scale == "small":
        return SMALL
    if scale == "full":
        return FULL
    raise ValueError(f"scale must be 'small' or 'full', got {scale!r}")

