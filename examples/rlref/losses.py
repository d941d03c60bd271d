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
    "ClippedPGLoss",
    "ClippedPGLossConfig",
    "DPOLoss",
    "DPOLossConfig",
    "LossInputType",
    "LossType",
    "MseValueLoss",
    "MseValueLossConfig",
    "NLLLoss",
    "TRUNCATED_IS_TYPES",
    "critic_explained_variance",
    "next_token_logprobs",
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


def _get(data: Mapping, key: str, shape: tuple[int, ...], dtype: torch.dtype, *, mask: bool = False):
    """Fetch ``data[key]``, check presence, type, floating dtype, shape (and 0/1 for masks)."""
    if key not in data:
        raise ValueError(f"data is missing the required key {key!r} (has: {sorted(data)})")
    value = data[key]
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"data[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        hint = " (masks are float 0/1: use .float())" if mask else ""
        raise TypeError(f"data[{key!r}] must be a floating tensor, got dtype {value.dtype}{hint}")
    if tuple(value.shape) != shape:
        raise ValueError(f"data[{key!r}] must have shape {shape}, got {tuple(value.shape)}")
    if mask and not bool(((value == 0) | (value == 1)).all()):
        raise ValueError(f"data[{key!r}] must contain only 0 and 1")
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
        sm = _get(data, "sample_mask", (B,), dtype, mask=True)
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
        sm = _get(data, "sample_mask", (B,), dtype, mask=True)
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
        sm = _get(data, "sample_mask", (B,), dtype, mask=True)
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
    NeMo RL's ``if self.cliprange and self.cliprange > 0`` (line 1257).
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
        sm = _get(data, "sample_mask", (shape[0],), dtype, mask=True)
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
