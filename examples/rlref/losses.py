"""Reference losses of NeMo RL (policy gradient, NLL, DPO, value MSE, ...), written from the formulas.

Every class follows NeMo RL's ``LossFunction`` protocol (nemo_rl/algorithms/loss/interfaces.py:23-110):
it is called with keywords and returns ``(loss, metrics)``::

    loss, metrics = loss_fn(next_token_logprobs=curr, data=data,
                            global_valid_seqs=GS, global_valid_toks=GT)

* ``curr`` is ``[B, S-1]``: ``curr[b, t] = log pi(input_ids[b, t+1] | input_ids[b, :t+1])``
  (see :func:`next_token_logprobs`).
* ``data`` is a dict of tensors in NeMo RL's layout: ``[B, S]`` per-token tensors whose column 0 is
  ignored (column ``t+1`` pairs with ``curr[:, t]``), ``sample_mask`` ``[B]``.
* ``GT`` / ``GS`` are the valid token / sequence counts over the *global* batch, so micro-batch
  losses add up to the full-batch loss.

The loss is computed in float32 (as NeMo RL does, nemo_rl/algorithms/loss/loss_functions.py:223), or
in float64 when ``next_token_logprobs`` is float64. ``metrics`` values are Python floats (NLL's
per-row mode reports a list), named exactly as NeMo RL names them.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from rlref.kl import KL_TYPES, calculate_kl
from rlref.masking import EPS, masked_mean

__all__ = [
    "DISTILLATION_KL_TYPES",
    "LOG_INFINITESIMAL",
    "ClippedPGLoss",
    "ClippedPGLossConfig",
    "DPOLoss",
    "DPOLossConfig",
    "LossInputType",
    "LossType",
    "CrossTokenizerDistillationLoss",
    "CrossTokenizerDistillationLossConfig",
    "DistillationLoss",
    "DistillationLossConfig",
    "DraftCrossEntropyLoss",
    "DraftLossWrapper",
    "MseValueLoss",
    "MseValueLossConfig",
    "PreferenceLoss",
    "NLLLoss",
    "TRUNCATED_IS_TYPES",
    "chunk_average",
    "critic_explained_variance",
    "distillation_topk_logprobs",
    "draft_loss_inputs",
    "exact_token_map",
    "next_token_logprobs",
    "topk_projection_matrix",
]

TRUNCATED_IS_TYPES = (None, "tis", "icepop", "seq-mask-tis")


class LossType(enum.Enum):
    """How a loss is normalised. NeMo RL: ``LossType`` (nemo_rl/algorithms/loss/interfaces.py:23-110).

    TOKEN_LEVEL divides by ``global_valid_toks``; SEQUENCE_LEVEL by ``global_valid_seqs``.
    """

    TOKEN_LEVEL = "token_level"
    SEQUENCE_LEVEL = "sequence_level"


class LossInputType(enum.Enum):
    """What the model hands the loss.

    NeMo RL: ``LossInputType`` (nemo_rl/algorithms/loss/interfaces.py:23-110).
    """

    LOGIT = "logit"
    LOGPROB = "logprob"


# --------------------------------------------------------------------------------------------------
# Input helpers and validation
# --------------------------------------------------------------------------------------------------


def next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``curr[b, t] = log_softmax(logits[b, t, :])[input_ids[b, t+1]]`` for ``t = 0..S-2``.

    ``logits`` ``[B, S, V]`` (the last position is unused), ``input_ids`` ``[B, S]`` integer.
    Returns ``[B, S-1]`` in float32 (float64 if ``logits`` is float64).

    NeMo RL: ``prepare_loss_input`` (nemo_rl/algorithms/loss/utils.py:37-120) turns logits into these
    next-token log-probs before calling a ``LossInputType.LOGPROB`` loss; hence the ``[:, 1:]`` slicing
    of the ``[B, S]`` data tensors (nemo_rl/algorithms/loss/loss_functions.py:383-385).
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(input_ids, torch.Tensor):
        raise TypeError("logits and input_ids must be torch.Tensors")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got dtype {logits.dtype}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
    if logits.dim() != 3 or input_ids.dim() != 2 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"expected logits [B, S, V] and input_ids [B, S]; got logits {tuple(logits.shape)}, "
            f"input_ids {tuple(input_ids.shape)}"
        )
    if input_ids.shape[1] < 2:
        raise ValueError(f"need a sequence length S >= 2, got input_ids {tuple(input_ids.shape)}")
    vocab = logits.shape[-1]
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"input_ids must lie in [0, {vocab}) (the vocab size of logits)")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits[:, :-1].to(dtype), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def _compute_dtype(curr: torch.Tensor) -> torch.dtype:
    return torch.float64 if curr.dtype == torch.float64 else torch.float32


def _check_curr(curr: object, name: str = "next_token_logprobs") -> torch.Tensor:
    if not isinstance(curr, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(curr).__name__}")
    if not curr.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {curr.dtype}")
    if curr.dim() != 2:
        raise ValueError(f"{name} must be [B, S-1], got shape {tuple(curr.shape)}")
    return curr


def _get(data: Mapping, key: str, shape: tuple[int, ...], dtype: torch.dtype, *, mask: bool = False,
         weight: bool = False):
    """Fetch ``data[key]``, check presence, type, floating dtype, shape (0/1 for masks; finite and >= 0
    for weights: ``sample_mask`` is NeMo RL's float ``loss_multiplier``, nemo_rl/data/interfaces.py:39)."""
    if key not in data:
        raise ValueError(f"data is missing the required key {key!r} (has: {sorted(data)})")
    value = data[key]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"data[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        hint = " (masks are float 0/1: use .float())" if mask or weight else ""
        raise TypeError(f"data[{key!r}] must be a floating tensor, got dtype {value.dtype}{hint}")
    if tuple(value.shape) != shape:
        raise ValueError(f"data[{key!r}] must have shape {shape}, got {tuple(value.shape)}")
    if mask and not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"data[{key!r}] must contain only 0 and 1")
    if weight and not bool((torch.isfinite(value) & (value >= 0)).all()):
        raise ValueError(f"data[{key!r}] must hold finite weights >= 0 (a loss multiplier per sample)")
    return value.to(dtype)


def _count(name: str, value, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{name} must be a number or a 0-d tensor, got {value!r}")
    if isinstance(value, (int, float)):
        out = torch.tensor(float(value), dtype=dtype, device=device)
    elif isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold a single number, got shape {tuple(value.shape)}")
        out = value.detach().reshape(()).to(dtype=dtype, device=device)
    else:
        raise TypeError(f"{name} must be a number or a 0-d tensor, got {type(value).__name__}")
    if not bool(torch.isfinite(out)) or float(out) < 0:
        raise ValueError(f"{name} must be a finite count >= 0, got {float(out)}")
    return out


def _check_data(data: object) -> Mapping:
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a dict of tensors, got {type(data).__name__}")
    return data


def _loss_inputs(next_token_logprobs: object, data: object) -> tuple[torch.Tensor, Mapping, torch.dtype]:
    """Checked ``(curr, data, dtype)``: ``curr`` cast to the compute dtype (float64 stays, else float32)."""
    curr = _check_curr(next_token_logprobs)
    data = _check_data(data)
    dtype = _compute_dtype(curr)
    return curr.to(dtype), data, dtype


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def _row_mean(values: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean over ``token_mask``: ``sum_t v*tm / (sum_t tm + 1e-8)`` -> ``[B]``."""
    return (values * token_mask).sum(-1) / (token_mask.sum(-1) + EPS)


def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _check_number(name: str, value, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        kind = "a number or None" if allow_none else "a number"
        raise TypeError(f"{name} must be {kind}, got {value!r}")


def _build_config(cls, config, overrides: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if isinstance(config, Mapping):
        unknown += sorted(set(config) - known)
    if unknown:
        raise TypeError(f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(known)}")
    if config is None:
        return cls(**overrides)
    if isinstance(config, Mapping):
        return cls(**{**dict(config), **overrides})
    if isinstance(config, cls):
        return dataclasses.replace(config, **overrides) if overrides else config
    raise TypeError(f"config must be a {cls.__name__}, a dict or None, got {type(config).__name__}")


# --------------------------------------------------------------------------------------------------
# Clipped policy gradient (GRPO / PPO / DAPO / GSPO / CISPO / REINFORCE)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClippedPGLossConfig:
    """Every key of NeMo RL's ``ClippedPGLossConfig`` with its default (YAML section ``loss_fn``).

    NeMo RL: ``ClippedPGLossConfig`` (nemo_rl/algorithms/loss/loss_functions.py:111-164); the values
    shipped in examples/configs/grpo_math_1B.yaml:79-111 equal these defaults. Unlike NeMo RL (a
    pydantic model with ``extra="allow"``, where a misspelled key is silently ignored), unknown keys
    and inconsistent combinations raise here.
    """

    disable_ppo_ratio: bool = False
    token_level_loss: bool = True
    sequence_level_importance_ratios: bool = False
    ratio_clip_min: float = 0.2
    ratio_clip_max: float = 0.2
    ratio_clip_c: float | None = None
    reference_policy_kl_penalty: float = 0.01
    reference_policy_kl_type: str = "k3"
    kl_input_clamp_value: float | None = 20.0
    kl_output_clamp_value: float | None = 10.0
    use_kl_in_reward: bool = False
    use_importance_sampling_correction: bool = False
    truncated_importance_sampling_type: str | None = None
    truncated_importance_sampling_ratio: float | None = None
    truncated_importance_sampling_ratio_min: float | None = None
    use_on_policy_kl_approximation: bool = False
    force_on_policy_ratio: bool = False
    use_cispo: bool = False
    positive_example_nll_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "disable_ppo_ratio",
            "token_level_loss",
            "sequence_level_importance_ratios",
            "use_kl_in_reward",
            "use_importance_sampling_correction",
            "use_on_policy_kl_approximation",
            "force_on_policy_ratio",
            "use_cispo",
        ):
            _check_bool(name, getattr(self, name))
        for name in ("ratio_clip_min", "ratio_clip_max", "reference_policy_kl_penalty",
                     "positive_example_nll_weight"):
            value = getattr(self, name)
            _check_number(name, value)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        _check_number("ratio_clip_c", self.ratio_clip_c, allow_none=True)
        if self.ratio_clip_c is not None and not self.ratio_clip_c > 1:
            raise ValueError(f"ratio_clip_c (dual clip) must be > 1 or None, got {self.ratio_clip_c!r}")
        if self.reference_policy_kl_type not in KL_TYPES:
            raise ValueError(
                f"reference_policy_kl_type must be one of {KL_TYPES}, got {self.reference_policy_kl_type!r}"
            )
        for name in ("kl_input_clamp_value", "kl_output_clamp_value"):
            value = getattr(self, name)
            _check_number(name, value, allow_none=True)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if self.sequence_level_importance_ratios and self.token_level_loss:
            raise ValueError(
                "sequence_level_importance_ratios=True (GSPO) requires token_level_loss=False, "
                "got token_level_loss=True"
            )
        if self.use_cispo:
            for name, bad in (
                ("disable_ppo_ratio", True),
                ("force_on_policy_ratio", True),
                ("sequence_level_importance_ratios", True),
                ("token_level_loss", False),
            ):
                if getattr(self, name) is bad:
                    raise ValueError(f"use_cispo=True is incompatible with {name}={bad}")
            if self.ratio_clip_c is not None:
                raise ValueError(
                    f"use_cispo=True is incompatible with dual clipping: ratio_clip_c={self.ratio_clip_c!r} "
                    "(set it to None)"
                )
        t = self.truncated_importance_sampling_type
        if t not in TRUNCATED_IS_TYPES:
            raise ValueError(
                f"truncated_importance_sampling_type must be one of {TRUNCATED_IS_TYPES}, got {t!r}"
            )
        _check_number("truncated_importance_sampling_ratio", self.truncated_importance_sampling_ratio,
                      allow_none=True)
        _check_number("truncated_importance_sampling_ratio_min",
                      self.truncated_importance_sampling_ratio_min, allow_none=True)
        hi, lo = self.truncated_importance_sampling_ratio, self.truncated_importance_sampling_ratio_min
        if t is not None:
            if not self.use_importance_sampling_correction:
                raise ValueError(
                    f"truncated_importance_sampling_type={t!r} requires "
                    "use_importance_sampling_correction=True, got False"
                )
            if hi is None or not hi > 0:
                raise ValueError(
                    f"truncated_importance_sampling_type={t!r} requires truncated_importance_sampling_ratio "
                    f"> 0, got {hi!r}"
                )
            if t in ("icepop", "seq-mask-tis") and lo is None:
                raise ValueError(
                    f"truncated_importance_sampling_type={t!r} requires "
                    "truncated_importance_sampling_ratio_min, got None"
                )
            if lo is not None and lo > hi:
                raise ValueError(
                    f"truncated_importance_sampling_ratio_min={lo!r} must be <= "
                    f"truncated_importance_sampling_ratio={hi!r}"
                )
            if t == "seq-mask-tis" and self.sequence_level_importance_ratios:
                raise ValueError(
                    "truncated_importance_sampling_type='seq-mask-tis' is incompatible with "
                    "sequence_level_importance_ratios=True"
                )
        elif hi is not None or lo is not None:
            raise ValueError(
                "truncated_importance_sampling_ratio / _ratio_min are set "
                f"({hi!r}, {lo!r}) but truncated_importance_sampling_type is None, so they would be ignored"
            )
        if lo is not None and lo < 0:
            raise ValueError(f"truncated_importance_sampling_ratio_min must be >= 0, got {lo!r}")


class ClippedPGLoss:
    r"""Clipped policy-gradient loss: GRPO / PPO / DAPO / GSPO / CISPO / REINFORCE, plus KL and IS.

    Per token (``r`` = ratio, ``rc = clamp(r, 1 - ratio_clip_min, 1 + ratio_clip_max)``, ``A`` = advantage)::

        L = max(-A * r, -A * rc)                    # = -min(r A, clip(r) A)
        L = min(L, -c * A) where A < 0              # dual clip, ratio_clip_c = c
        L = -A * sg(rc) * log pi                    # use_cispo
        loss = Agg(iw * L) + Agg(beta * KL_k(pi || pi_ref)) + mu * NLL(correct samples)

    ``Agg`` is the global token mean (``token_level_loss``) or the global mean of per-sequence means;
    ``r = exp(log pi - log pi_old)`` per token, or ``exp(mean_t(...))`` per sequence (GSPO,
    ``sequence_level_importance_ratios``), or ``r = log pi`` (``disable_ppo_ratio``, REINFORCE/RLOO),
    or ``exp(log pi - sg(log pi)) = 1`` (``force_on_policy_ratio``). ``iw`` is the (optionally
    truncated) train/generation importance weight ``exp(prev - gen)``, used when
    ``use_importance_sampling_correction``.

    NeMo RL: ``ClippedPGLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:180-788), config
    ``loss_fn.*`` = :class:`ClippedPGLossConfig`. ``loss_type`` is TOKEN_LEVEL iff ``token_level_loss``.

    ``data`` keys: ``advantages``, ``token_mask``, ``generation_logprobs`` (``[B, S]``, column 0
    ignored), ``sample_mask`` ``[B]``; ``prev_logprobs`` unless ``force_on_policy_ratio``;
    ``reference_policy_logprobs`` when the KL coefficient is non-zero; optional ``rewards`` ``[B]``
    (positive-example NLL) and ``curr_logprobs_unfiltered`` ``[B, S-1]`` (KL term only, not shifted).
    """

    input_type = LossInputType.LOGPROB

    def __init__(self, config: ClippedPGLossConfig | Mapping | None = None, **overrides) -> None:
        self.config = _build_config(ClippedPGLossConfig, config, overrides)
        self.loss_type = LossType.TOKEN_LEVEL if self.config.token_level_loss else LossType.SEQUENCE_LEVEL

    def __repr__(self) -> str:
        return f"ClippedPGLoss({self.config})"

    @property
    def kl_coefficient(self) -> float:
        """beta actually used in the loss: 0 when ``use_kl_in_reward`` (the KL moved into the reward)."""
        cfg = self.config
        return 0.0 if cfg.use_kl_in_reward else float(cfg.reference_policy_kl_penalty)

    def __call__(self, next_token_logprobs, data, global_valid_seqs, global_valid_toks):
        cfg = self.config
        curr, data, dtype = _loss_inputs(next_token_logprobs, data)
        B, T = curr.shape
        full = (B, T + 1)
        beta = self.kl_coefficient

        tm = _get(data, "token_mask", full, dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        A = _get(data, "advantages", full, dtype)[:, 1:]
        gen = _get(data, "generation_logprobs", full, dtype)[:, 1:]
        if cfg.force_on_policy_ratio:
            prev = curr.detach()
        else:
            prev = _get(data, "prev_logprobs", full, dtype)[:, 1:]
        GT = _count("global_valid_toks", global_valid_toks, dtype, curr.device)
        GS = _count("global_valid_seqs", global_valid_seqs, dtype, curr.device)
        m = tm * sm[:, None]

        def tok_mean(v):
            return masked_mean(v, m, global_normalization_factor=GT)

        def agg(v):
            if cfg.token_level_loss:
                return tok_mean(v)
            return masked_mean(_row_mean(v, tm), sm, global_normalization_factor=GS)

        # 4.1 KL penalty to the reference policy.
        if beta != 0:
            ref = _get(data, "reference_policy_logprobs", full, dtype)[:, 1:]
            if "curr_logprobs_unfiltered" in data:
                cu = _get(data, "curr_logprobs_unfiltered", (B, T), dtype)
            else:
                cu = curr
            if cfg.use_on_policy_kl_approximation:
                w_kl = torch.exp(cu - gen)
            else:
                w_kl = torch.exp(cu - cu.detach())
            w_kl = _finite_or_zero(w_kl)
            kl_tok = beta * calculate_kl(
                logprobs=cu,
                logprobs_reference=ref,
                kl_type=cfg.reference_policy_kl_type,
                input_clamp_value=cfg.kl_input_clamp_value,
                output_clamp_value=cfg.kl_output_clamp_value,
                importance_sampling_weights=w_kl,
            )
            kl_term = agg(kl_tok)
        else:
            kl_term = torch.zeros((), dtype=dtype, device=curr.device)

        # 4.2 Ratio.
        if cfg.force_on_policy_ratio:
            r = torch.exp(curr - curr.detach())
            rc = r
        elif not cfg.disable_ppo_ratio:
            log_ratio = curr - prev
            if cfg.sequence_level_importance_ratios:
                r = torch.exp(_row_mean(log_ratio, tm))[:, None].expand(B, T)
            else:
                r = torch.exp(log_ratio)
            rc = r.clamp(1 - cfg.ratio_clip_min, 1 + cfg.ratio_clip_max)
        else:
            r = rc = curr

        # 4.3 Per-token surrogate loss.
        if cfg.use_cispo:
            L = -A * rc.detach() * curr
        else:
            L = torch.maximum(-A * r, -A * rc)
        if cfg.ratio_clip_c is not None:
            L = torch.where(A < 0, torch.minimum(L, -A * cfg.ratio_clip_c), L)

        # 4.4 Train/generation importance weights (never carry gradient).
        metrics: dict[str, float] = {}
        with torch.no_grad():
            if cfg.sequence_level_importance_ratios:
                w = torch.exp(((prev - gen) * m).sum(-1, keepdim=True))  # [B, 1]: product of ratios
            else:
                w = torch.exp(prev - gen)
            w = _finite_or_zero(w)
            t_type = cfg.truncated_importance_sampling_type
            if t_type is not None:
                hi = cfg.truncated_importance_sampling_ratio
                lo = cfg.truncated_importance_sampling_ratio_min
                if t_type == "tis":
                    lo = 0.0 if lo is None else lo
                    oob = ((w > hi) | (w < lo)).to(dtype).expand(B, T)
                    metrics["is_oob_ratio"] = float(tok_mean(oob))
                    w = w.clamp(lo, hi)
                elif t_type == "icepop":
                    keep = ((w >= lo) & (w <= hi)).to(dtype)
                    metrics["is_oob_ratio"] = float(tok_mean((1 - keep).expand(B, T)))
                    w = w * keep
                else:  # seq-mask-tis
                    d = _finite_or_zero(prev - gen)
                    g = torch.exp(_row_mean(d, tm))
                    keep = ((g >= lo) & (g <= hi)).to(dtype)
                    metrics["is_oob_ratio"] = float(((1 - keep) * sm).sum() / (GS + EPS))
                    w = w * keep[:, None]
            iw = w if cfg.use_importance_sampling_correction else torch.ones_like(w)

        # 4.5 Loss.
        actor_loss = agg(iw * L)
        nll = torch.zeros((), dtype=dtype, device=curr.device)
        if cfg.positive_example_nll_weight > 0 and "rewards" in data:
            rewards = _get(data, "rewards", (B,), dtype)
            cm = m * (rewards > 0).to(dtype)[:, None]
            n = cm.sum()
            if float(n) > 0:
                nll = (-curr * cm).sum() / (n + EPS)
        loss = actor_loss + kl_term + cfg.positive_example_nll_weight * nll

        # 4.6 Metrics.
        with torch.no_grad():
            valid = m != 0
            r_d, rc_d = r.detach(), rc.detach()
            has_valid = bool(valid.any())
            kl_value = float(kl_term)
            metrics.update(
                {
                    "loss": float(loss.detach()),
                    "probs_ratio": float(tok_mean(r_d)),
                    "probs_ratio_clamped": float(tok_mean(rc_d)),
                    "probs_ratio_min": float(r_d[valid].min()) if has_valid else math.inf,
                    "probs_ratio_max": float(r_d[valid].max()) if has_valid else -math.inf,
                    "probs_ratio_clamped_min": float(rc_d[valid].min()) if has_valid else math.inf,
                    "probs_ratio_clamped_max": float(rc_d[valid].max()) if has_valid else -math.inf,
                    "kl_penalty": kl_value / beta if kl_value != 0 else 0.0,
                    "token_mult_prob_error": float(tok_mean(torch.exp((gen - prev).abs() * m))),
                    "gen_kl_error": float(tok_mean(calculate_kl(
                        gen, prev, cfg.reference_policy_kl_type, None, None))),
                    "policy_kl_error": float(tok_mean(calculate_kl(
                        prev, gen, cfg.reference_policy_kl_type, None, None))),
                    "js_divergence_error": float(tok_mean(_js_divergence(prev, gen))),
                    "sampling_importance_ratio": float(
                        masked_mean(w, sm, global_normalization_factor=GS)
                        if cfg.sequence_level_importance_ratios
                        else tok_mean(w)
                    ),
                    "num_valid_samples": float(sm.sum()),
                    "approx_entropy": float(-tok_mean(torch.exp(curr - gen) * curr)),
                    "positive_nll_loss": float(nll),
                }
            )
        return loss, metrics


def _js_divergence(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Per-token ``1/2 J(p) + 1/2 J(q)`` with ``M = log(e^p/2 + e^q/2)``, ``J(x) = e^(x-M) - (x-M) - 1``."""
    mix = torch.log(0.5 * torch.exp(p_log) + 0.5 * torch.exp(q_log))
    jp = torch.exp(p_log - mix) - (p_log - mix) - 1
    jq = torch.exp(q_log - mix) - (q_log - mix) - 1
    return 0.5 * jp + 0.5 * jq


# --------------------------------------------------------------------------------------------------
# NLL (SFT)
# --------------------------------------------------------------------------------------------------


class NLLLoss:
    """Negative log-likelihood of the unmasked tokens (SFT).

    ``dpo_loss=False``: ``loss = -sum(curr * m) / (global_valid_toks + 1e-8)`` (a scalar).
    ``dpo_loss=True``: per-row vector ``loss_b = -sum_t curr_bt m_bt``, divided by ``max(sum_t m_bt, 1)``
    when ``dpo_average_log_probs`` (``metrics["loss"]`` is then a list, one value per row).
    ``m = token_mask[:, 1:] * sample_mask[:, None]``.

    NeMo RL: ``NLLLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:791-842), used by SFT; metrics
    ``loss``, ``num_unmasked_tokens``, ``num_valid_samples``. ``loss_type`` TOKEN_LEVEL.
    """

    input_type = LossInputType.LOGPROB
    loss_type = LossType.TOKEN_LEVEL

    def __init__(self, dpo_loss: bool = False, dpo_average_log_probs: bool = False) -> None:
        _check_bool("dpo_loss", dpo_loss)
        _check_bool("dpo_average_log_probs", dpo_average_log_probs)
        self.dpo_loss = dpo_loss
        self.dpo_average_log_probs = dpo_average_log_probs

    def __repr__(self) -> str:
        return f"NLLLoss(dpo_loss={self.dpo_loss}, dpo_average_log_probs={self.dpo_average_log_probs})"

    def __call__(self, next_token_logprobs, data, global_valid_seqs, global_valid_toks):
        curr, data, dtype = _loss_inputs(next_token_logprobs, data)
        B, T = curr.shape
        tm = _get(data, "token_mask", (B, T + 1), dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        GT = _count("global_valid_toks", global_valid_toks, dtype, curr.device)
        _count("global_valid_seqs", global_valid_seqs, dtype, curr.device)  # validated, unused
        m = tm * sm[:, None]
        if self.dpo_loss:
            loss = -(curr * m).sum(-1)
            if self.dpo_average_log_probs:
                loss = loss / m.sum(-1).clamp(min=1)
            loss_metric: float | list[float] = loss.detach().tolist()
        else:
            loss = -(curr * m).sum() / (GT + EPS)
            loss_metric = float(loss.detach())
        metrics = {
            "loss": loss_metric,
            "num_unmasked_tokens": float(m.sum()),
            "num_valid_samples": float(sm.sum()),
        }
        return loss, metrics


# --------------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DPOLossConfig:
    """NeMo RL's ``DPOLossConfig`` keys and defaults (nemo_rl/algorithms/loss/loss_functions.py:949-954).

    In NeMo RL these keys live in the ``dpo:`` YAML section (nemo_rl/algorithms/dpo.py:290-294).
    ``reference_policy_kl_penalty`` is the DPO beta.
    """

    reference_policy_kl_penalty: float = 0.05
    preference_loss_weight: float = 1.0
    sft_loss_weight: float = 0.0
    preference_average_log_probs: bool = False
    sft_average_log_probs: bool = False

    def __post_init__(self) -> None:
        for name in ("preference_average_log_probs", "sft_average_log_probs"):
            _check_bool(name, getattr(self, name))
        for name in ("reference_policy_kl_penalty", "preference_loss_weight", "sft_loss_weight"):
            value = getattr(self, name)
            _check_number(name, value)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")


class DPOLoss:
    r"""Direct preference optimisation loss with an optional SFT term on the chosen responses.

    Rows are interleaved pairs: row ``2i`` chosen, row ``2i+1`` rejected. With
    ``ref = reference_policy_logprobs[:, :-1]`` (pre-rolled: column t pairs with ``curr[:, t]``) and
    ``tm = token_mask[:, 1:]``::

        rho_b   = sum_t (curr - ref)_bt tm_bt     (/ max(sum_t tm_bt, 1) if preference_average_log_probs)
        Delta_i = rho_{2i} - rho_{2i+1}
        preference_loss = sum_i sm_{2i} * (-log sigmoid(beta * Delta_i)) / (GS/2 + 1e-8)
        loss = sft_loss_weight * sft_loss + preference_loss_weight * preference_loss

    ``beta = reference_policy_kl_penalty``; ``sft_loss`` is the chosen rows' NLL (per-token mean when
    ``sft_average_log_probs``) over the same ``GS/2`` pairs.

    NeMo RL: ``DPOLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:966-1106), config ``dpo.*`` =
    :class:`DPOLossConfig`; metrics ``loss``, ``sft_loss``, ``preference_loss``, ``accuracy``,
    ``rewards_chosen_mean``, ``rewards_rejected_mean``, ``num_valid_samples``. ``loss_type``
    SEQUENCE_LEVEL.
    """

    input_type = LossInputType.LOGPROB
    loss_type = LossType.SEQUENCE_LEVEL

    def __init__(self, config: DPOLossConfig | Mapping | None = None, **overrides) -> None:
        self.config = _build_config(DPOLossConfig, config, overrides)

    def __repr__(self) -> str:
        return f"DPOLoss({self.config})"

    def __call__(self, next_token_logprobs, data, global_valid_seqs, global_valid_toks):
        cfg = self.config
        curr, data, dtype = _loss_inputs(next_token_logprobs, data)
        B, T = curr.shape
        if B % 2 != 0:
            raise ValueError(
                f"DPO needs an even number of rows (interleaved chosen/rejected pairs), got B={B}"
            )
        full = (B, T + 1)
        ref = _get(data, "reference_policy_logprobs", full, dtype)[:, :-1]
        tm = _get(data, "token_mask", full, dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        GS = _count("global_valid_seqs", global_valid_seqs, dtype, curr.device)
        _count("global_valid_toks", global_valid_toks, dtype, curr.device)  # validated, unused
        n_pairs = GS / 2 + EPS

        rho = ((curr - ref) * tm).sum(-1)
        if cfg.preference_average_log_probs:
            rho = rho / tm.sum(-1).clamp(min=1)
        rho_c, rho_r = rho[0::2], rho[1::2]
        sm_c, sm_r = sm[0::2], sm[1::2]
        delta = rho_c - rho_r
        beta = cfg.reference_policy_kl_penalty
        preference_loss = (sm_c * sm_c * -F.logsigmoid(beta * delta)).sum() / n_pairs

        if cfg.sft_loss_weight > 0:
            msk = tm * sm[:, None]
            s = -(curr * msk).sum(-1)
            if cfg.sft_average_log_probs:
                s = s / msk.sum(-1).clamp(min=1)
            sft_loss = (s[0::2] * sm_c).sum() / n_pairs
        else:
            sft_loss = torch.zeros((), dtype=dtype, device=curr.device)
        loss = cfg.sft_loss_weight * sft_loss + cfg.preference_loss_weight * preference_loss

        with torch.no_grad():
            metrics = {
                "loss": float(loss.detach()),
                "sft_loss": float(sft_loss),
                "preference_loss": float(preference_loss),
                "accuracy": float(((rho_c > rho_r).to(dtype) * sm_c).sum() / n_pairs),
                "rewards_chosen_mean": float((rho_c * sm_c).sum() / n_pairs),
                "rewards_rejected_mean": float((rho_r * sm_r).sum() / n_pairs),
                "num_valid_samples": float(sm.sum() / 2),
            }
        return loss, metrics


# --------------------------------------------------------------------------------------------------
# Value-model MSE (PPO critic)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MseValueLossConfig:
    """NeMo RL's ``MseValueLossConfig`` (nemo_rl/algorithms/loss/loss_functions.py:1209-1215), YAML
    section ``value_loss_fn`` (nemo_rl/algorithms/ppo.py:285).

    ``scale`` multiplies the loss; ``cliprange`` (``None`` or 0 = off) bounds how far a new value
    prediction may move from the rollout-time value before the clipped branch takes over.
    """

    scale: float = 1.0
    cliprange: float | None = None

    def __post_init__(self) -> None:
        _check_number("scale", self.scale)
        if self.scale < 0:
            raise ValueError(f"scale must be >= 0, got {self.scale!r}")
        _check_number("cliprange", self.cliprange, allow_none=True)
        if self.cliprange is not None and self.cliprange < 0:
            raise ValueError(f"cliprange must be >= 0 or None, got {self.cliprange!r}")


class MseValueLoss:
    r"""PPO value (critic) loss: half the masked mean squared error, optionally value-clipped.

    With ``V`` the value head output ``[B, S]`` (or ``[B, S, 1]``), ``R = data["returns"]``,
    ``m = token_mask * sample_mask[:, None]`` (``[B, S]``, *not* shifted: value ``t`` predicts the
    return from token ``t``) and ``c = cliprange``::

        no clipping:  loss = scale * 1/2 * sum(m (V - R)^2) / (GT + 1e-8)
        clipping:     Vc   = clamp(V, V_old - c, V_old + c)       (V_old = data["values"])
                      loss = scale * 1/2 * sum(m max((V - R)^2, (Vc - R)^2)) / (GT + 1e-8)

    ``vf_clipfrac`` is the token share where the clipped branch is strictly larger. The metrics
    ``returns_mean``, ``values_mean``, ``returns_sq_mean``, ``residual_sq_mean`` are divided by
    ``GT`` so they add up over micro-batches; ``values_min`` / ``values_max`` are per micro-batch
    (0.0 when nothing is valid) and are combined with min / max. :func:`critic_explained_variance`
    turns the summed metrics into the explained variance NeMo RL logs.

    NeMo RL: ``MseValueLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:1218-1343), input type
    ``LOGIT`` (the value head output), ``loss_type`` TOKEN_LEVEL; ``cliprange`` 0 means off, as in
    NeMo RL's ``if self.cliprange and self.cliprange > 0`` (line 1253).
    """

    input_type = LossInputType.LOGIT
    loss_type = LossType.TOKEN_LEVEL

    def __init__(self, config: MseValueLossConfig | Mapping | None = None, **overrides) -> None:
        self.config = _build_config(MseValueLossConfig, config, overrides)

    def __repr__(self) -> str:
        return f"MseValueLoss({self.config})"

    def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
        cfg = self.config
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits (value head output) must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits (value head output) must be a floating tensor, got dtype {logits.dtype}")
        if logits.dim() == 3 and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        if logits.dim() != 2:
            raise ValueError(
                f"logits (value head output) must be [B, S] or [B, S, 1], got shape {tuple(logits.shape)}"
            )
        data = _check_data(data)
        dtype = _compute_dtype(logits)
        values = logits.to(dtype)
        shape = tuple(values.shape)
        returns = _get(data, "returns", shape, dtype)
        tm = _get(data, "token_mask", shape, dtype, mask=True)
        sm = _get(data, "sample_mask", (shape[0],), dtype, weight=True)
        GT = _count("global_valid_toks", global_valid_toks, dtype, values.device)
        _count("global_valid_seqs", global_valid_seqs, dtype, values.device)  # validated, unused
        m = tm * sm[:, None]

        def tok_mean(x: torch.Tensor) -> torch.Tensor:
            return (x * m).sum() / (GT + EPS)

        unclipped = (values - returns) ** 2
        if cfg.cliprange:
            old = _get(data, "values", shape, dtype)
            v_clipped = torch.maximum(torch.minimum(values, old + cfg.cliprange), old - cfg.cliprange)
            clipped = (v_clipped - returns) ** 2
            per_token = torch.maximum(unclipped, clipped)
            clipfrac = float(tok_mean((clipped > unclipped).to(dtype)).detach())
        else:
            per_token = unclipped
            clipfrac = 0.0
        loss = 0.5 * cfg.scale * tok_mean(per_token)

        with torch.no_grad():
            v = values.detach()
            valid = v[m != 0]
            metrics = {
                "loss": float(loss.detach()),
                "vf_clipfrac": clipfrac,
                "returns_mean": float(tok_mean(returns)),
                "values_mean": float(tok_mean(v)),
                "values_min": float(valid.min()) if valid.numel() else 0.0,
                "values_max": float(valid.max()) if valid.numel() else 0.0,
                "returns_sq_mean": float(tok_mean(returns**2)),
                "residual_sq_mean": float(tok_mean((returns - v) ** 2)),
                "num_valid_samples": int(shape[0]),
            }
        return loss, metrics


def critic_explained_variance(metrics: Mapping) -> float:
    r"""``1 - Var(R - V) / max(Var(R), 1e-8)`` from summed :class:`MseValueLoss` metrics.

    ``Var(R) = returns_sq_mean - returns_mean^2``,
    ``Var(R - V) = residual_sq_mean - (returns_mean - values_mean)^2`` (metrics already summed over
    micro-batches). NeMo RL: ``_compute_critic_metrics`` (nemo_rl/algorithms/ppo.py:1165-1191),
    logged as ``critic/explained_var``.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
    keys = ("returns_mean", "values_mean", "returns_sq_mean", "residual_sq_mean")
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ValueError(f"metrics is missing {missing}")
    r, v, r2, e2 = (float(metrics[k]) for k in keys)
    return 1.0 - (e2 - (r - v) ** 2) / max(r2 - r**2, 1e-8)


# --------------------------------------------------------------------------------------------------
# Preference (reward-model) loss
# --------------------------------------------------------------------------------------------------


class PreferenceLoss:
    r"""Bradley-Terry loss of a scalar reward model on interleaved (chosen, rejected) rows.

    ``logits`` are the reward-model scores ``r`` (``[B]`` or ``[B, 1]``), row ``2i`` chosen, ``2i+1``
    rejected; ``sm = data["sample_mask"]``::

        loss = sum_i sm_{2i} * -log sigmoid(r_{2i} - r_{2i+1}) / (GS/2 + 1e-8)

    ``accuracy`` (share of pairs with ``r_{2i} > r_{2i+1}``) and ``rewards_chosen_mean`` use the
    chosen rows' mask, ``rewards_rejected_mean`` the rejected rows' mask, all over ``GS/2`` pairs;
    ``num_valid_samples = sum(sm) / 2``. There is no beta: NeMo RL's ``_preference_loss`` defaults it
    to 1 for the reward model; :class:`DPOLoss` uses the same reduction with ``beta`` and
    log-ratio rewards.

    NeMo RL: ``PreferenceLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:853-945), the reward
    model (RM) loss, input type ``LOGIT``, ``loss_type`` SEQUENCE_LEVEL.
    """

    input_type = LossInputType.LOGIT
    loss_type = LossType.SEQUENCE_LEVEL

    def __repr__(self) -> str:
        return "PreferenceLoss()"

    def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits (reward scores) must be a torch.Tensor, got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise TypeError(f"logits (reward scores) must be a floating tensor, got dtype {logits.dtype}")
        if logits.dim() == 2 and logits.shape[-1] == 1:
            logits = logits.squeeze(-1)
        if logits.dim() != 1:
            raise ValueError(f"logits (reward scores) must be [B] or [B, 1], got shape {tuple(logits.shape)}")
        B = logits.shape[0]
        if B % 2 != 0:
            raise ValueError(
                "the preference loss needs an even number of rows (interleaved chosen/rejected pairs), "
                f"got B={B}"
            )
        data = _check_data(data)
        dtype = _compute_dtype(logits)
        r = logits.to(dtype)
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        GS = _count("global_valid_seqs", global_valid_seqs, dtype, r.device)
        if global_valid_toks is not None:
            _count("global_valid_toks", global_valid_toks, dtype, r.device)  # validated, unused
        n_pairs = GS / 2 + EPS
        r_c, r_r = r[0::2], r[1::2]
        sm_c, sm_r = sm[0::2], sm[1::2]
        loss = (sm_c * sm_c * -F.logsigmoid(r_c - r_r)).sum() / n_pairs
        with torch.no_grad():
            metrics = {
                "loss": float(loss.detach()),
                "accuracy": float(((r_c > r_r).to(dtype) * sm_c).sum() / n_pairs),
                "rewards_chosen_mean": float((r_c.detach() * sm_c).sum() / n_pairs),
                "rewards_rejected_mean": float((r_r.detach() * sm_r).sum() / n_pairs),
                "num_valid_samples": float(sm.sum() / 2),
            }
        return loss, metrics


# --------------------------------------------------------------------------------------------------
# On-policy / top-k distillation
# --------------------------------------------------------------------------------------------------

DISTILLATION_KL_TYPES = ("forward", "reverse", "mixed")
#: NeMo RL's stand-in for ``log 0`` of a teacher probability outside its top-k
#: (``self.log_infinitesimal``, nemo_rl/algorithms/loss/loss_functions.py:1134).
LOG_INFINITESIMAL = -100.0


@dataclasses.dataclass(frozen=True)
class DistillationLossConfig:
    """NeMo RL's ``DistillationLossConfig`` (nemo_rl/algorithms/loss/loss_functions.py:1109-1112).

    ``kl_type``: ``forward`` ``KL(teacher || student)``, ``reverse`` ``KL(student || teacher)`` or
    ``mixed`` ``w * forward + (1 - w) * reverse`` with ``w = mixed_kl_weight``.
    ``zero_outside_topk``: keep the student's full-vocabulary probabilities (teacher = 0 outside its
    top-k) instead of renormalising both inside the top-k.
    """

    kl_type: str = "mixed"
    mixed_kl_weight: float = 0.5
    zero_outside_topk: bool = False

    def __post_init__(self) -> None:
        if self.kl_type not in DISTILLATION_KL_TYPES:
            raise ValueError(f"kl_type must be one of {DISTILLATION_KL_TYPES}, got {self.kl_type!r}")
        _check_number("mixed_kl_weight", self.mixed_kl_weight)
        if not 0 <= self.mixed_kl_weight <= 1:
            raise ValueError(f"mixed_kl_weight must lie in [0, 1], got {self.mixed_kl_weight!r}")
        _check_bool("zero_outside_topk", self.zero_outside_topk)


def distillation_topk_logprobs(
    student_logits: torch.Tensor,
    teacher_topk_logits: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    *,
    zero_outside_topk: bool,
    calculate_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""Student and teacher log-probs on the teacher's top-k ids, next-token aligned (``[:, :-1]``).

    ``student_logits`` ``[B, S, V]``, ``teacher_topk_logits`` / ``teacher_topk_indices`` ``[B, S, k]``.
    Teacher: ``log_softmax`` over its ``k`` logits (renormalised inside the top-k). Student:
    ``zero_outside_topk=False`` renormalises inside the same ``k`` ids
    (``log_softmax(student_logits.gather(ids))``); ``True`` keeps the full-vocabulary
    ``log_softmax(student_logits).gather(ids)``. ``H_all = sum_v p_v log p_v`` over the full vocabulary
    (the *negative* entropy, despite the name) when ``calculate_entropy``, else ``None``.
    Returns ``[B, S-1, k]``, ``[B, S-1, k]``, ``[B, S-1]``; float32 (float64 for float64 logits).

    NeMo RL: ``get_distillation_topk_logprobs_from_logits``
    (nemo_rl/distributed/model_utils.py:1856-2020), called by ``prepare_loss_input`` for
    ``LossInputType.DISTILLATION`` (nemo_rl/algorithms/loss/utils.py:122-141).
    """
    for name, t in (("student_logits", student_logits), ("teacher_topk_logits", teacher_topk_logits),
                    ("teacher_topk_indices", teacher_topk_indices)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not student_logits.is_floating_point() or not teacher_topk_logits.is_floating_point():
        raise TypeError("student_logits and teacher_topk_logits must be floating tensors")
    if teacher_topk_indices.dtype.is_floating_point or teacher_topk_indices.dtype == torch.bool:
        raise TypeError(
            f"teacher_topk_indices must be an integer tensor, got dtype {teacher_topk_indices.dtype}"
        )
    if student_logits.dim() != 3:
        raise ValueError(f"student_logits must be [B, S, V], got shape {tuple(student_logits.shape)}")
    if teacher_topk_indices.dim() != 3 or teacher_topk_indices.shape[-1] <= 0:
        raise ValueError(
            f"topk must be positive: teacher_topk_indices must be [B, S, k] with k >= 1, "
            f"got shape {tuple(teacher_topk_indices.shape)}"
        )
    B, S, V = student_logits.shape
    if teacher_topk_indices.shape[:2] != (B, S) or teacher_topk_logits.shape != teacher_topk_indices.shape:
        raise ValueError(
            f"teacher_topk_logits {tuple(teacher_topk_logits.shape)} and teacher_topk_indices "
            f"{tuple(teacher_topk_indices.shape)} must both be [B, S, k] with [B, S] = {(B, S)}"
        )
    if S < 2:
        raise ValueError(f"need a sequence length S >= 2, got student_logits {tuple(student_logits.shape)}")
    if int(teacher_topk_indices.min()) < 0 or int(teacher_topk_indices.max()) >= V:
        raise ValueError(f"teacher_topk_indices must lie in [0, {V}) (the student vocab size)")
    _check_bool("zero_outside_topk", zero_outside_topk)
    dtype = _compute_dtype(student_logits)
    s = student_logits.to(dtype)
    ids = teacher_topk_indices.long()
    h_all = None
    if zero_outside_topk:
        full = torch.log_softmax(s, dim=-1)
        s_topk = full.gather(-1, ids)
        if calculate_entropy:
            h_all = (full.exp() * full).sum(-1)[:, :-1]
    else:
        s_topk = torch.log_softmax(s.gather(-1, ids), dim=-1)
    t_topk = torch.log_softmax(teacher_topk_logits.to(dtype), dim=-1)
    return s_topk[:, :-1], t_topk[:, :-1], h_all


class DistillationLoss:
    r"""Token-level KL between a student and a teacher's top-k distribution (on-policy distillation).

    With ``s, t`` the student and teacher log-probs on the teacher's top-k ids at each position
    (:func:`distillation_topk_logprobs`) and ``w = mixed_kl_weight``::

        forward  KL_t = sum_k e^t (t - s)
        reverse  KL_t = sum_k e^s (s - t)  [+ H_rest - LOG_INF * P_rest   if zero_outside_topk]
        mixed    KL_t = w * forward + (1 - w) * reverse   (correction scaled by 1 - w)
        loss = sum_t KL_t m_t / (GT + 1e-8),   m = token_mask[:, 1:] * sample_mask[:, None]

    The correction is the reverse KL's mass outside the top-k when the teacher is taken as zero
    there: ``H_rest = H_all - sum_k e^s s``, ``P_rest = 1 - sum_k e^s`` and ``log 0`` replaced by
    ``LOG_INF = -100``, so ``-LOG_INF * P_rest`` charges 100 per unit of student mass outside the
    teacher's top-k. Neither implementation checks that the ``k`` ids are distinct: a repeated id
    counts its probability twice, ``P_rest`` turns negative and so can the loss (NeMo RL's own test
    batch has ``k = 64`` ids drawn from ``V = 8``).

    Call with the student's logits (``[B, S, V]``) and ``data`` holding ``teacher_topk_logits``,
    ``teacher_topk_indices`` (``[B, S, k]``), ``token_mask`` ``[B, S]``, ``sample_mask`` ``[B]``; or
    with precomputed top-k log-probs through :meth:`from_topk_logprobs` (NeMo RL's call shape).

    NeMo RL: ``DistillationLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:1124-1206), config
    ``loss_fn.*`` = :class:`DistillationLossConfig`, metrics ``loss``, ``num_valid_samples``;
    ``loss_type`` TOKEN_LEVEL. Used by on-policy distillation (nemo_rl/algorithms/distillation.py).
    """

    input_type = LossInputType.LOGIT
    loss_type = LossType.TOKEN_LEVEL

    def __init__(self, config: DistillationLossConfig | Mapping | None = None, **overrides) -> None:
        self.config = _build_config(DistillationLossConfig, config, overrides)

    def __repr__(self) -> str:
        return f"DistillationLoss({self.config})"

    def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
        cfg = self.config
        data = _check_data(data)
        for key in ("teacher_topk_logits", "teacher_topk_indices"):
            if key not in data:
                raise ValueError(f"data is missing the required key {key!r} (has: {sorted(data)})")
        s, t, h_all = distillation_topk_logprobs(
            logits, data["teacher_topk_logits"], data["teacher_topk_indices"],
            zero_outside_topk=cfg.zero_outside_topk,
            calculate_entropy=cfg.zero_outside_topk and cfg.kl_type != "forward",
        )
        return self.from_topk_logprobs(s, t, h_all, data, global_valid_seqs, global_valid_toks)

    def from_topk_logprobs(self, student_topk_logprobs, teacher_topk_logprobs, H_all, data,
                           global_valid_seqs, global_valid_toks):
        """The loss from ``[B, S-1, k]`` student / teacher top-k log-probs and ``H_all`` ``[B, S-1]``."""
        cfg = self.config
        s, t = student_topk_logprobs, teacher_topk_logprobs
        for name, x in (("student_topk_logprobs", s), ("teacher_topk_logprobs", t)):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
                raise ValueError(f"{name} must be a floating [B, S-1, k] tensor")
        if s.shape != t.shape:
            raise ValueError(
                f"student_topk_logprobs {tuple(s.shape)} and teacher_topk_logprobs {tuple(t.shape)} differ"
            )
        dtype = _compute_dtype(s)
        s, t = s.to(dtype), t.to(dtype)
        B, T, _ = s.shape
        data = _check_data(data)
        tm = _get(data, "token_mask", (B, T + 1), dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        GT = _count("global_valid_toks", global_valid_toks, dtype, s.device)
        _count("global_valid_seqs", global_valid_seqs, dtype, s.device)  # validated, unused
        ps, pt = s.exp(), t.exp()
        forward = (pt * (t - s)).sum(-1)
        reverse = (ps * (s - t)).sum(-1)
        w = cfg.mixed_kl_weight
        if cfg.kl_type == "forward":
            kl = forward
        elif cfg.kl_type == "reverse":
            kl = reverse
        else:
            kl = w * forward + (1 - w) * reverse
        if cfg.zero_outside_topk and cfg.kl_type != "forward":
            if not isinstance(H_all, torch.Tensor) or tuple(H_all.shape) != (B, T):
                raise ValueError(
                    f"H_all must be a [B, S-1] = {(B, T)} tensor when zero_outside_topk with "
                    f"kl_type={cfg.kl_type!r}, got {H_all if H_all is None else tuple(H_all.shape)}"
                )
            h_rest = H_all.to(dtype) - (ps * s).sum(-1)
            p_rest = 1 - ps.sum(-1)
            correction = h_rest - LOG_INFINITESIMAL * p_rest
            kl = kl + (correction if cfg.kl_type == "reverse" else (1 - w) * correction)
        m = tm * sm[:, None]
        loss = (kl * m).sum() / (GT + EPS)
        return loss, {"loss": float(loss.detach()), "num_valid_samples": int(B)}


# --------------------------------------------------------------------------------------------------
# Draft-model (speculative decoding) soft cross-entropy
# --------------------------------------------------------------------------------------------------


def draft_loss_inputs(
    policy_logits: torch.Tensor, token_mask: torch.Tensor, d2t: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Targets for the draft head: the policy's logits and token mask shifted one position left.

    ``teacher[:, t] = policy_logits[:, t+1]`` and ``mask[:, t] = token_mask[:, t+1]`` with the last
    position zero-filled (Megatron's ``roll_tensor(shifts=-1)``); ``policy_logits`` is detached.
    With a draft vocabulary ``d2t`` (``[V_draft]``, draft id ``i`` is policy id ``i + d2t[i]``) the
    teacher logits keep only those columns: ``teacher[..., i] = policy[..., i + d2t[i]]``.

    NeMo RL: ``prepare_loss_input`` for ``LossInputType.DRAFT`` (nemo_rl/algorithms/loss/utils.py:170-206).
    """
    if not isinstance(policy_logits, torch.Tensor) or not policy_logits.is_floating_point():
        raise TypeError("policy_logits must be a floating torch.Tensor")
    if policy_logits.dim() != 3:
        raise ValueError(f"policy_logits must be [B, S, V], got shape {tuple(policy_logits.shape)}")
    if not isinstance(token_mask, torch.Tensor) or tuple(token_mask.shape) != tuple(policy_logits.shape[:2]):
        got = tuple(token_mask.shape) if isinstance(token_mask, torch.Tensor) else type(token_mask).__name__
        raise ValueError(f"token_mask must be a [B, S] = {tuple(policy_logits.shape[:2])} tensor, got {got}")
    teacher = torch.zeros_like(policy_logits)
    teacher[:, :-1] = policy_logits.detach()[:, 1:]
    mask = torch.zeros_like(token_mask)
    mask[:, :-1] = token_mask[:, 1:]
    if d2t is not None:
        if not isinstance(d2t, torch.Tensor) or d2t.dim() != 1 or d2t.dtype.is_floating_point:
            raise TypeError("d2t must be a 1-d integer tensor (draft id i -> policy id i + d2t[i])")
        cols = torch.arange(len(d2t), device=d2t.device) + d2t
        V = policy_logits.shape[-1]
        if len(d2t) and (int(cols.min()) < 0 or int(cols.max()) >= V):
            raise ValueError(f"d2t maps draft ids outside the policy vocabulary [0, {V})")
        teacher = teacher[..., cols.long()]
    return teacher, mask


class DraftCrossEntropyLoss:
    r"""Soft-target cross-entropy of a draft (speculative-decoding) head against the policy.

    ``ce_t = -sum_v softmax(teacher_t)_v * log_softmax(student_t)_v`` (the forward KL up to the
    teacher's entropy, so the same student gradient), and
    ``loss = sum_t ce_t m_t / (GT + 1e-8)`` with ``m = token_mask * sample_mask[:, None]`` (masks already
    shifted by :func:`draft_loss_inputs`; no further ``[:, 1:]``). Returns the loss tensor only, as
    NeMo RL does; :class:`DraftLossWrapper` adds it to a policy loss and reports it as ``draft_loss``.

    NeMo RL: ``DraftCrossEntropyLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:66-108),
    ``input_type`` DRAFT, ``loss_type`` TOKEN_LEVEL; under tensor parallelism it calls
    ``DistributedCrossEntropy`` (same value, vocabulary sharded).
    """

    loss_type = LossType.TOKEN_LEVEL

    def __repr__(self) -> str:
        return "DraftCrossEntropyLoss()"

    def __call__(self, teacher_logits, student_logits, token_mask, data, global_valid_seqs,
                 global_valid_toks):
        for name, x in (("teacher_logits", teacher_logits), ("student_logits", student_logits)):
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 3:
                raise ValueError(f"{name} must be a floating [B, S, V] tensor")
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
                f"{tuple(student_logits.shape)} must have the same shape (map the policy vocab with d2t)"
            )
        data = _check_data(data)
        dtype = _compute_dtype(student_logits)
        B, S, _ = student_logits.shape
        tm = _get({"token_mask": token_mask}, "token_mask", (B, S), dtype, mask=True)
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        GT = _count("global_valid_toks", global_valid_toks, dtype, student_logits.device)
        p_t = torch.softmax(teacher_logits.detach().to(dtype), dim=-1)
        log_p_s = torch.log_softmax(student_logits.to(dtype), dim=-1)
        ce = -(p_t * log_p_s).sum(-1)
        return (ce * tm * sm[:, None]).sum() / (GT + EPS)


class DraftLossWrapper:
    r"""``policy loss + loss_weight * draft loss``, with ``metrics["draft_loss"]`` always reported.

    Called with the policy's logits ``[B, S, V]`` and ``data`` holding ``student_logits`` (the draft
    head's output, ``[B, S, V_draft]``), ``token_mask``, ``sample_mask`` and whatever ``loss_fn``
    needs (``input_ids`` when it takes next-token log-probs). ``loss_fn`` is any loss of this module;
    a ``LOGPROB`` loss gets :func:`next_token_logprobs` of the logits.

    NeMo RL: ``DraftLossWrapper`` (nemo_rl/algorithms/loss/wrapper.py:231-289).
    """

    def __init__(self, loss_fn, loss_weight: float = 1.0, d2t: torch.Tensor | None = None) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        _check_number("loss_weight", loss_weight)
        self.loss_fn = loss_fn
        self.loss_weight = loss_weight
        self.d2t = d2t
        self.draft_loss_fn = DraftCrossEntropyLoss()

    def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
        if global_valid_toks is None:
            raise ValueError("global_valid_toks is required for DraftLossWrapper")
        data = _check_data(data)
        if getattr(self.loss_fn, "input_type", None) is LossInputType.LOGPROB:
            if "input_ids" not in data:
                raise ValueError("data is missing the required key 'input_ids' for a LOGPROB policy loss")
            policy_input = next_token_logprobs(logits, data["input_ids"])
        else:
            policy_input = logits
        policy_loss, metrics = self.loss_fn(policy_input, data, global_valid_seqs, global_valid_toks)
        if "student_logits" not in data or "token_mask" not in data:
            raise ValueError("data needs 'student_logits' (draft head output) and 'token_mask'")
        teacher, mask = draft_loss_inputs(logits, data["token_mask"], self.d2t)
        draft = self.draft_loss_fn(teacher, data["student_logits"], mask, data,
                                   global_valid_seqs, global_valid_toks)
        metrics = dict(metrics)
        metrics["draft_loss"] = float(draft.detach())
        return policy_loss + self.loss_weight * draft, metrics


# --------------------------------------------------------------------------------------------------
# Cross-tokenizer distillation (single teacher; alignment and projection supplied)
# --------------------------------------------------------------------------------------------------

_CHUNK_EPS = 1e-10  # NeMo RL's eps in chunk averaging and renormalisation (x_token/loss_utils.py:127)


def topk_projection_matrix(indices: torch.Tensor, likelihoods: torch.Tensor, teacher_vocab_size: int):
    """Dense ``M [V_s, V_t]`` from a top-k projection: ``M[s, indices[s, j]] += likelihoods[s, j]``.

    Negative ids (the ``-1`` "no mapping" sentinel) and ids ``>= teacher_vocab_size`` are dropped.
    NeMo RL: ``get_sparse_projection_matrix`` (nemo_rl/algorithms/x_token/loss_utils.py:744-821)
    builds the same matrix as a sparse (coordinate-format) tensor from the projection file.
    """
    indices, likelihoods = _check_projection(indices, likelihoods)
    if not isinstance(teacher_vocab_size, int) or teacher_vocab_size < 1:
        raise ValueError(f"teacher_vocab_size must be a positive int, got {teacher_vocab_size!r}")
    V_s = indices.shape[0]
    M = torch.zeros(V_s, teacher_vocab_size, dtype=torch.float32)
    keep = (indices >= 0) & (indices < teacher_vocab_size)
    rows = torch.arange(V_s)[:, None].expand_as(indices)
    M.index_put_((rows[keep], indices[keep]), likelihoods[keep].float(), accumulate=True)
    return M


def _check_projection(indices, likelihoods):
    if not isinstance(indices, torch.Tensor) or not isinstance(likelihoods, torch.Tensor):
        raise TypeError("projection indices and likelihoods must be torch.Tensors")
    if indices.dim() != 2 or indices.shape != likelihoods.shape:
        raise ValueError(
            f"projection indices and likelihoods must both be [V_student, top_k], got "
            f"{tuple(indices.shape)} and {tuple(likelihoods.shape)}"
        )
    if indices.dtype.is_floating_point or not likelihoods.is_floating_point():
        raise TypeError("projection indices must be integer and likelihoods floating")
    return indices.long(), likelihoods


def exact_token_map(indices, likelihoods, teacher_vocab_size: int, *, xtoken_loss: bool = False):
    """Gold-loss vocabulary partition: paired common ids and the uncommon rest.

    A student id ``s`` maps exactly to teacher id ``t`` (its highest-weight projection entry) when
    ``xtoken_loss=False`` (strict): its top weight is exactly 1 and its second slot is the ``-1``
    sentinel; several students on one ``t``: the lowest ``s`` wins. ``xtoken_loss=True`` (relaxed):
    top weight ``>= 0.6``; on a collision the highest weight wins, ties to the lowest ``s``.
    Returns ``{"common_student", "common_teacher", "uncommon_student", "uncommon_teacher"}`` (long
    tensors; common pairs sorted by student id, uncommon ids ascending).

    NeMo RL: ``build_exact_token_map`` (nemo_rl/algorithms/x_token/loss_utils.py:877-1001).
    """
    indices, likelihoods = _check_projection(indices, likelihoods)
    _check_bool("xtoken_loss", xtoken_loss)
    V_s = indices.shape[0]
    order = torch.argsort(likelihoods, dim=-1, descending=True, stable=True)
    top_w = likelihoods.gather(-1, order[:, :1]).squeeze(-1)
    top_t = indices.gather(-1, order[:, :1]).squeeze(-1)
    if xtoken_loss:
        candidate = top_w >= 0.6
    else:
        no_second = indices[:, 1] == -1 if indices.shape[1] > 1 else torch.ones(V_s, dtype=torch.bool)
        candidate = (top_w == 1.0) & no_second
    candidate &= (top_t >= 0) & (top_t < teacher_vocab_size)
    winner: dict[int, int] = {}
    for s in torch.nonzero(candidate).flatten().tolist():  # ascending s: ties go to the lowest id
        t = int(top_t[s])
        if t not in winner or (xtoken_loss and float(top_w[s]) > float(top_w[winner[t]])):
            winner[t] = s
    pairs = sorted((s, t) for t, s in winner.items())
    common_s = torch.tensor([s for s, _ in pairs], dtype=torch.long)
    common_t = torch.tensor([t for _, t in pairs], dtype=torch.long)
    s_mask = torch.ones(V_s, dtype=torch.bool)
    s_mask[common_s] = False
    t_mask = torch.ones(teacher_vocab_size, dtype=torch.bool)
    t_mask[common_t] = False
    return {
        "common_student": common_s,
        "common_teacher": common_t,
        "uncommon_student": torch.nonzero(s_mask).flatten(),
        "uncommon_teacher": torch.nonzero(t_mask).flatten(),
    }


def chunk_average(values: torch.Tensor, chunk_id: torch.Tensor, num_chunks: int):
    """Per-chunk mean over positions: ``out[b, c] = sum_{t: id=c} v[b, t] / (n_bc + 1e-10)``.

    ``values`` ``[B, T, V]``, ``chunk_id`` ``[B, T]`` in ``[-1, num_chunks)`` (``-1``: no chunk).
    Returns ``([B, C, V], sizes [B, C])``. NeMo RL: ``chunk_average_log_probs``
    (nemo_rl/algorithms/x_token/loss_utils.py:132-160).
    """
    if values.dim() != 3 or chunk_id.shape != values.shape[:2]:
        raise ValueError(
            f"chunk_id must be [B, T] matching values [B, T, V]; got {tuple(chunk_id.shape)} and "
            f"{tuple(values.shape)}"
        )
    one_hot = (chunk_id.unsqueeze(-1) == torch.arange(num_chunks, device=values.device)).to(values.dtype)
    sums = one_hot.transpose(1, 2) @ values
    sizes = one_hot.sum(1)
    return sums / (sizes.unsqueeze(-1) + _CHUNK_EPS), sizes


def _shift_next(x: torch.Tensor, fill) -> torch.Tensor:
    """``out[:, t] = x[:, t+1]``, last column ``fill`` (NeMo RL's ``cp_shift_next`` without CP)."""
    out = torch.full_like(x, fill)
    out[:, :-1] = x[:, 1:]
    return out


@dataclasses.dataclass(frozen=True)
class CrossTokenizerDistillationLossConfig:
    """The single-teacher keys of NeMo RL's ``CrossTokenizerDistillationLossConfig``
    (nemo_rl/algorithms/loss/loss_functions.py:1349-1432), defaults from
    examples/configs/xtoken_off_policy_distillation.yaml:42-52.

    Not here: the multi-teacher keys (``kd_loss_mode``, ``teacher_weights``, ``sum_weights_metric``,
    ``alpha``, ``normalize_teacher_by_vocab``, per-teacher overrides) and the runtime-injected
    projection paths and vocab sizes (the projection is passed to the constructor instead).
    """

    gold_loss: bool = False
    xtoken_loss: bool = False
    temperature: float = 1.0
    vocab_topk: int = 8192
    uncommon_topk: int = 8192
    reverse_kl: bool = False
    exact_token_match_only: bool = False
    kl_loss_weight: float = 1.0
    ce_loss_scale: float = 0.1
    dynamic_loss_scaling: bool = True

    def __post_init__(self) -> None:
        for name in ("gold_loss", "xtoken_loss", "reverse_kl", "exact_token_match_only",
                     "dynamic_loss_scaling"):
            _check_bool(name, getattr(self, name))
        if self.xtoken_loss and not self.gold_loss:
            raise ValueError("xtoken_loss=True requires gold_loss=True (it modifies the gold-loss exact map)")
        _check_number("temperature", self.temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        for name in ("vocab_topk", "uncommon_topk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("kl_loss_weight", "ce_loss_scale"):
            _check_number(name, getattr(self, name))


class CrossTokenizerDistillationLoss:
    r"""Distillation from a teacher with a different tokenizer, on aligned token *chunks*.

    An aligner (out of scope here) cuts both tokenisations of the same text into ``C`` matching
    chunks: ``student_chunk_id`` ``[B, T_s]``, ``teacher_chunk_id`` ``[B, T_t]`` (``-1`` = no chunk) and
    ``pair_valid`` ``[B, C]``. Position ``t`` predicts token ``t+1``, so its distribution is averaged
    into the chunk of token ``t+1`` (ids shifted left, last ``-1``). A chunk counts when both sides
    are non-empty, ``pair_valid`` (and ``pair_is_correct`` with ``exact_token_match_only``) and
    its row's ``sample_mask``; ``n`` = number of such chunks. ``T`` = temperature.

    * P-KL (``gold_loss=False``): pick ``k = vocab_topk`` teacher ids with the largest max logit over
      the micro-batch; ``q_s = chunkmean(softmax(z_s/T) M[:, ids])`` renormalised, ``log q_t =
      chunkmean(log_softmax(z_t[..., ids]/T))``; ``KD = T^2 sum_chunks KL(q_t || q_s) / n``
      (``KL(q_s || q_t)`` with ``reverse_kl``).
    * gold (``gold_loss=True``): full-vocabulary ``log_softmax(z/T)`` chunk-averaged on both sides; KL on
      the exact-mapped common ids (:func:`exact_token_map`) plus an L1 between the sorted
      probabilities of the uncommon ids (top ``uncommon_topk``); ``KD = T^2 (KL_common + L1) / n``.
    * ``CE`` = the student's next-token cross-entropy ``/ GT``; ``loss = kl_loss_weight * KD +
      ce_loss_scale * CE``, or with ``dynamic_loss_scaling`` ``loss = sg(|CE| / |KD|) * KD + CE``.

    ``projection`` is the top-k projection ``(indices, likelihoods)`` ``[V_s, top_k]`` (teacher ids,
    ``-1`` = none). ``data``: ``input_ids``, ``token_mask`` ``[B, T_s]``, ``sample_mask``,
    ``teacher_logits`` ``[B, T_t, V_t]``, ``student_chunk_id``, ``teacher_chunk_id``, ``pair_valid``
    (``pair_is_correct`` if ``exact_token_match_only``).

    NeMo RL: ``CrossTokenizerDistillationLossFn`` (nemo_rl/algorithms/loss/loss_functions.py:1463-2667),
    single-teacher ``kd_loss_mode="sum"`` path: ``_compute_p_kl`` (2260), ``_compute_gold`` (2433),
    ``_compute_ce`` (2647), combination in ``__call__`` (1673-1687). Out of scope: the token aligner
    (nemo_rl/algorithms/x_token/token_aligner.py), projection-file parsing, multi-teacher
    aggregation, the same-tokenizer teacher path, the IPC teacher-logit transport and TP/CP.
    """

    input_type = LossInputType.LOGIT
    loss_type = LossType.TOKEN_LEVEL

    def __init__(self, projection, teacher_vocab_size: int,
                 config: CrossTokenizerDistillationLossConfig | Mapping | None = None, **overrides) -> None:
        self.config = _build_config(CrossTokenizerDistillationLossConfig, config, overrides)
        if not isinstance(projection, (tuple, list)) or len(projection) != 2:
            raise TypeError("projection must be an (indices, likelihoods) pair of [V_student, top_k] tensors")
        self.projection = topk_projection_matrix(projection[0], projection[1], teacher_vocab_size)
        self.exact_map = exact_token_map(projection[0], projection[1], teacher_vocab_size,
                                         xtoken_loss=self.config.xtoken_loss)
        self.teacher_vocab_size = teacher_vocab_size

    def __repr__(self) -> str:
        V_s, V_t = self.projection.shape
        return f"CrossTokenizerDistillationLoss({self.config}, V_s={V_s}, V_t={V_t})"

    def _alignment(self, data, B, T_s, T_t):
        sc, tc = data.get("student_chunk_id"), data.get("teacher_chunk_id")
        pv = data.get("pair_valid")
        for name, x, shape in (("student_chunk_id", sc, (B, T_s)), ("teacher_chunk_id", tc, (B, T_t))):
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or x.dtype.is_floating_point:
                raise ValueError(f"data[{name!r}] must be an integer {shape} tensor")
        if not isinstance(pv, torch.Tensor) or pv.dim() != 2 or pv.shape[0] != B or pv.dtype != torch.bool:
            raise ValueError(f"data['pair_valid'] must be a bool [B={B}, C] tensor")
        if self.config.exact_token_match_only:
            pc = data.get("pair_is_correct")
            if not isinstance(pc, torch.Tensor) or pc.shape != pv.shape or pc.dtype != torch.bool:
                raise ValueError(
                    "exact_token_match_only needs data['pair_is_correct'] (bool, shaped like pair_valid)"
                )
            pv = pv & pc
        return _shift_next(sc.long(), -1), _shift_next(tc.long(), -1), pv

    def kd_term(self, logits, teacher_logits, data):
        """``(KD, metrics)``: the P-KL or gold distillation term (already times ``T^2``)."""
        cfg = self.config
        T = cfg.temperature
        B, T_s, V_s = logits.shape
        if V_s != self.projection.shape[0]:
            raise ValueError(f"logits vocab {V_s} != projection student vocab {self.projection.shape[0]}")
        if teacher_logits.dim() != 3 or teacher_logits.shape[0] != B:
            raise ValueError(
                f"data['teacher_logits'] must be [B={B}, T_t, V_t], got {tuple(teacher_logits.shape)}"
            )
        if teacher_logits.shape[-1] < self.teacher_vocab_size:
            raise ValueError(
                f"data['teacher_logits'] vocab {teacher_logits.shape[-1]} < teacher_vocab_size "
                f"{self.teacher_vocab_size}"
            )
        dtype = _compute_dtype(logits)
        z_t = teacher_logits[..., : self.teacher_vocab_size].to(dtype)  # drop padded lm_head columns
        sc, tc, pv = self._alignment(data, B, T_s, z_t.shape[1])
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        C = pv.shape[1]
        log_p_s = torch.log_softmax(logits.to(dtype) / T, dim=-1)
        if cfg.gold_loss:
            log_p_t = torch.log_softmax(z_t / T, dim=-1)
            s_chunks, s_sizes = chunk_average(log_p_s, sc, C)
            t_chunks, t_sizes = chunk_average(log_p_t, tc, C)
        else:
            k = min(cfg.vocab_topk, self.teacher_vocab_size)
            with torch.no_grad():
                ids = torch.topk(z_t.reshape(-1, z_t.shape[-1]).max(0).values, k).indices.sort().values
            projected = log_p_s.exp() @ self.projection[:, ids].to(dtype)
            s_chunks, s_sizes = chunk_average(projected, sc, C)
            t_chunks, t_sizes = chunk_average(torch.log_softmax(z_t[..., ids] / T, dim=-1), tc, C)
            s_chunks = s_chunks / (s_chunks.sum(-1, keepdim=True) + _CHUNK_EPS)
            s_chunks = (s_chunks + _CHUNK_EPS).log()
        chunk_ok = (s_sizes > 0) & (t_sizes > 0) & pv
        valid = chunk_ok & sm.bool()[:, None]
        n = valid.sum().to(dtype)
        zero = (logits.sum() * 0).to(dtype)
        if float(n) == 0:
            count = "num_valid_chunks" if cfg.gold_loss else "num_valid_pairs"
            return zero, {"kl_loss": 0.0, "proj_accuracy": 0.0, count: 0}

        def kl(s_log, t_log):  # per chunk, forward KL(t || s) or reverse KL(s || t)
            if cfg.reverse_kl:
                return (s_log.exp() * (s_log - t_log)).sum(-1)
            return (t_log.exp() * (t_log - s_log)).sum(-1)

        if cfg.gold_loss:
            em = self.exact_map
            cs, ct = s_chunks[..., em["common_student"]], t_chunks[..., em["common_teacher"]]
            kl_common = (kl(cs, ct) * valid).sum() / n if cs.shape[-1] else zero
            su = s_chunks[..., em["uncommon_student"]][valid].exp()
            tu = t_chunks[..., em["uncommon_teacher"]][valid].exp()
            m = min(su.shape[-1], tu.shape[-1], cfg.uncommon_topk)
            if m > 0:
                s_top = torch.sort(su, dim=-1, descending=True).values[:, :m]
                t_top = torch.sort(tu, dim=-1, descending=True).values[:, :m]
                l1 = (s_top - t_top).abs().sum() / n
            else:
                l1 = zero
            kd = (kl_common + l1) * T * T
            with torch.no_grad():
                acc = float(((cs.argmax(-1) == ct.argmax(-1)) & valid).sum() / n) if cs.shape[-1] else 0.0
            metrics = {"kl_loss": float(kd.detach()), "kl_common": float(kl_common.detach()),
                       "l1_uncommon": float(l1.detach()), "proj_accuracy": acc, "num_valid_chunks": int(n)}
        else:
            kd = (kl(s_chunks, t_chunks) * valid).sum() / n * T * T
            with torch.no_grad():
                hit = (s_chunks.argmax(-1) == t_chunks.argmax(-1)) & chunk_ok
                acc = float(hit.sum() / chunk_ok.sum().clamp(min=1))
            metrics = {"kl_loss": float(kd.detach()), "proj_accuracy": acc, "num_valid_pairs": int(n)}
        return kd, metrics

    def ce_term(self, logits, data, global_valid_toks):
        """Student next-token cross-entropy (no temperature) over ``token_mask[:, 1:] * sample_mask``."""
        B, T_s, V = logits.shape
        dtype = _compute_dtype(logits)
        if "input_ids" not in data:
            raise ValueError(f"data is missing the required key 'input_ids' (has: {sorted(data)})")
        curr = next_token_logprobs(logits, data["input_ids"]).to(dtype)
        tm = _get(data, "token_mask", (B, T_s), dtype, mask=True)[:, 1:]
        sm = _get(data, "sample_mask", (B,), dtype, weight=True)
        GT = _count("global_valid_toks", global_valid_toks, dtype, logits.device)
        return -(curr * tm * sm[:, None]).sum() / (GT + EPS)

    def __call__(self, logits, data, global_valid_seqs, global_valid_toks):
        cfg = self.config
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 3:
            raise ValueError("logits must be a floating [B, T_s, V_s] tensor")
        data = _check_data(data)
        if "teacher_logits" not in data:
            raise ValueError(f"data is missing the required key 'teacher_logits' (has: {sorted(data)})")
        dtype = _compute_dtype(logits)
        _count("global_valid_seqs", global_valid_seqs, dtype, logits.device)  # validated, unused
        ce = self.ce_term(logits, data, global_valid_toks)
        kd, kd_metrics = self.kd_term(logits, data["teacher_logits"], data)
        if cfg.dynamic_loss_scaling:
            kd_abs, ce_abs = kd.detach().abs(), ce.detach().abs()
            scale = torch.where(kd_abs > 0, ce_abs / kd_abs, torch.ones_like(kd_abs))
            loss = scale * kd + ce
        else:
            scale = torch.ones((), dtype=dtype)
            loss = cfg.kl_loss_weight * kd + cfg.ce_loss_scale * ce
        with torch.no_grad():
            B = logits.shape[0]
            tm = data["token_mask"].to(dtype)[:, 1:] * data["sample_mask"].to(dtype)[:, None]
            hit = (logits[:, :-1].argmax(-1) == data["input_ids"][:, 1:]).to(dtype)
            accuracy = float((hit * tm).sum() / tm.sum().clamp(min=1))
        metrics = {
            "loss": float(loss.detach()),
            "kl_loss": float(kd.detach()),
            "ce_loss": float(ce.detach()),
            "kl_loss_scale": float(scale),
            "accuracy": accuracy,
            "num_valid_samples": int(B),
        }
        metrics.update({f"{k}_t0": v for k, v in kd_metrics.items()})
        metrics["weight_t0"] = 1.0
        return loss, metrics
