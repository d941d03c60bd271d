"""A learned critic for the lab, and the variance of policy-gradient estimates under each baseline.

The policy gradient with per-token advantages ``A_t`` is estimated from a batch of ``B`` responses by

    g = 1/B * sum_b sum_t m_bt * A_bt * grad log pi(y_bt | s_bt)

(the negative gradient of the REINFORCE loss ``-A log pi``; NeMo RL's ``ClippedPGLossFn`` at ratio 1).
What changes between GRPO and PPO is only ``A``:

* no baseline: ``A_bt = r_b``;
* GRPO's group baseline: ``A_bt = r_b - mean of the other responses to the same prompt``
  (:func:`rlref.advantages.grpo_advantages`, leave-one-out, no std normalisation);
* a learned critic ``V(s_t)`` with GAE(gamma, lambda) (:func:`rlref.advantages.gae_advantages`).

:class:`ValueModel` is the critic (a separate small transformer with a scalar head, like NeMo RL's
separate value model, ``policy.value`` in ``examples/configs/ppo_math_1B.yaml:298-299``);
:func:`train_critic` fits it with :class:`rlref.losses.MseValueLoss` (NeMo RL ``MseValueLossFn``,
nemo_rl/algorithms/loss/loss_functions.py:1218); :func:`gradient_samples` draws independent
batches and returns one flattened policy gradient per batch for every advantage method, and
:func:`total_variance` is the trace of their covariance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from rlref.advantages import gae_advantages, grpo_advantages
from rlref.lab.policy import PolicyConfig, TinyCausalLM
from rlref.lab.rollout import RolloutBatch, rollout
from rlref.lab.tasks import Task
from rlref.losses import MseValueLoss, next_token_logprobs

__all__ = [
    "ValueModel", "train_critic", "advantage_weights", "policy_gradient", "gradient_samples",
    "total_variance", "bootstrap_variance_ratio", "squared_mean_difference", "softmax_entropy_change",
    "METHODS",
]

#: The advantage methods :func:`advantage_weights` knows: ``"none"``, ``"group"`` and ``"gae"``.
METHODS = ("none", "group", "gae")


class ValueModel(nn.Module):
    """Critic ``V(s_t)``: a :class:`TinyCausalLM` body with a scalar head, in NeMo RL's ``[B, S]`` layout.

    ``forward(input_ids [B, S]) -> values [B, S]`` with ``values[:, t] = head(h[:, t-1])``, the value
    of the state *before* token ``t`` (the prefix ``y_<t``), aligned with the log-prob columns
    (column ``t`` scores token ``t``); ``values[:, 0] = 0``. The head is initialised to zero, so an
    untrained critic predicts 0 everywhere.

    NeMo RL: the value model of PPO (``policy.value`` section, a separate network trained by
    ``MseValueLossFn``; nemo_rl/algorithms/ppo.py:773 ``init_value``).
    """

    def __init__(self, config: PolicyConfig, seed: int | None = 0) -> None:
        super().__init__()
        self.body = TinyCausalLM(config, seed=seed)
        self.head = nn.Linear(config.d_model, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        body = self.body
        body(input_ids[:, :1])  # the body's own input checks (type, shape, vocabulary range)
        if input_ids.shape[1] > body.config.max_seq_len:
            raise ValueError(
                f"sequence length {input_ids.shape[1]} exceeds PolicyConfig.max_seq_len="
                f"{body.config.max_seq_len}"
            )
        S = input_ids.shape[1]
        x = body.tok_emb(input_ids) + body.pos_emb(torch.arange(S, device=input_ids.device))[None]
        for block in body.blocks:
            x = block(x, body.causal[:S, :S])
        v = self.head(body.ln_f(x)).squeeze(-1)  # v[:, t] = V(prefix up to and including token t)
        return torch.cat([torch.zeros_like(v[:, :1]), v[:, :-1]], dim=1)


def _check_batch(batch: object) -> RolloutBatch:
    if not isinstance(batch, RolloutBatch):
        raise TypeError(f"batch must be a rlref.lab RolloutBatch, got {type(batch).__name__}")
    return batch


def _check_int(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _mask(batch: RolloutBatch) -> torch.Tensor:
    return batch.token_mask * batch.sample_mask[:, None]


def train_critic(critic: ValueModel, policy: nn.Module, task: Task, steps: int = 100,
                 num_prompts: int = 32, num_generations: int = 4, lr: float = 3e-3,
                 generator: torch.Generator | None = None) -> list[float]:
    """Fit ``critic`` to Monte-Carlo returns of the frozen ``policy``; returns the loss per step.

    Each step samples ``num_prompts * num_generations`` responses, computes the returns with
    :func:`rlref.advantages.gae_advantages` at ``gae_lambda = gae_gamma = 1`` (so the return of every
    token is the response's reward) and takes one AdamW step on :class:`rlref.losses.MseValueLoss`.
    NeMo RL trains its critic the same way, on ``returns`` from ``GeneralizedAdvantageEstimator``
    (``gae_lambda_value`` when set; nemo_rl/algorithms/advantage_estimator.py:463-478).
    """
    if not isinstance(critic, ValueModel):
        raise TypeError(f"critic must be a ValueModel, got {type(critic).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"task must be a rlref.lab Task (from make_task), got {type(task).__name__}")
    for name, value in (("steps", steps), ("num_prompts", num_prompts), ("num_generations", num_generations)):
        _check_int(name, value)
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    loss_fn = MseValueLoss()
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        batch = rollout(policy, task.sample_prompts(num_prompts, generator), num_generations, 1.0, generator)
        mask = _mask(batch)
        with torch.no_grad():
            old = critic(batch.input_ids)
        _, returns = gae_advantages(batch.rewards.double(), mask.double(), old.double(), gae_lambda=1.0,
                                    gae_gamma=1.0, normalize_advantages=False)
        data = {"returns": returns.float(), "values": old, "token_mask": batch.token_mask,
                "sample_mask": batch.sample_mask}
        loss, _ = loss_fn(logits=critic(batch.input_ids), data=data, global_valid_seqs=len(batch),
                          global_valid_toks=mask.sum())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def advantage_weights(batch: RolloutBatch, method: str, values: torch.Tensor | None = None,
                      gae_lambda: float = 1.0, reward_offset: float = 0.0) -> torch.Tensor:
    """Per-token advantages ``[B, S]`` (0 off the mask) of ``method``, never normalised.

    The rewards are ``r_b + reward_offset`` (an offset leaves the expected gradient unchanged,
    since ``E[grad log pi] = 0``, and the group advantages exactly unchanged; a critic must have been
    trained on the same rewards). ``"none"``: ``r_b`` on every response token. ``"group"``: GRPO's
    leave-one-out group baseline
    (``grpo_advantages(normalize_rewards=False, use_leave_one_out_baseline=True)``; NeMo RL
    ``GRPOAdvantageEstimator``, nemo_rl/algorithms/advantage_estimator.py:57-98). ``"gae"``:
    ``gae_advantages(r, mask, values, gae_lambda, gae_gamma=1, normalize_advantages=False)`` with
    ``values`` from a :class:`ValueModel` (NeMo RL ``GeneralizedAdvantageEstimator``,
    nemo_rl/algorithms/advantage_estimator.py:302).
    """
    batch = _check_batch(batch)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(reward_offset, bool) or not isinstance(reward_offset, (int, float)):
        raise TypeError(f"reward_offset must be a number, got {reward_offset!r}")
    mask = _mask(batch).double()
    r = batch.rewards.double() + reward_offset
    if method == "none":
        return r[:, None] * mask
    if method == "group":
        return grpo_advantages(batch.prompt_ids, r, mask, normalize_rewards=False,
                               use_leave_one_out_baseline=True) * mask
    if values is None:
        raise ValueError("method='gae' needs values ([B, S] from a ValueModel)")
    adv, _ = gae_advantages(r, mask, values.double(), gae_lambda=gae_lambda, gae_gamma=1.0,
                            normalize_advantages=False)
    return adv * mask


def policy_gradient(policy: nn.Module, input_ids: torch.Tensor, weights: Sequence[torch.Tensor]
                    ) -> list[torch.Tensor]:
    """Flattened ``1/B sum_{b,t} w_bt grad log pi(y_bt | y_b,<t)`` for each ``[B, S]`` weight tensor.

    Column ``t`` of a weight tensor weighs token ``t`` (column 0 is never a generated token). One
    forward pass, one backward pass per weight tensor.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [B, S] tensor")
    if not weights:
        raise ValueError("weights is empty")
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor) or w.shape != input_ids.shape:
            raise ValueError(f"weights[{i}] must be a tensor of shape {tuple(input_ids.shape)}")
    params = [p for p in policy.parameters() if p.requires_grad]
    logp = next_token_logprobs(policy(input_ids).float(), input_ids)  # [B, S-1]
    B = input_ids.shape[0]
    out = []
    for i, w in enumerate(weights):
        objective = (w[:, 1:].to(logp.dtype) * logp).sum() / B
        grads = torch.autograd.grad(objective, params, retain_graph=i < len(weights) - 1, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                              for g, p in zip(grads, params, strict=True)]))
    return out


def gradient_samples(policy: nn.Module, task: Task, methods: Mapping[str, Mapping],
                     critic: ValueModel | None = None, repeats: int = 30, num_prompts: int = 16,
                     num_generations: int = 4, generator: torch.Generator | None = None
                     ) -> dict[str, torch.Tensor]:
    """``{label: [repeats, P]}``: one policy gradient per independent batch for every method.

    ``methods`` maps a label to the keyword arguments of :func:`advantage_weights` (``method`` and
    optionally ``gae_lambda``, ``reward_offset``), e.g. ``{"GAE 0.5": {"method": "gae",
    "gae_lambda": 0.5}}``. Every
    repeat draws fresh prompts and responses; all methods see the same batch, so their differences
    are paired.
    """
    if not isinstance(task, Task):
        raise TypeError(f"task must be a rlref.lab Task (from make_task), got {type(task).__name__}")
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError("methods must be a non-empty dict label -> advantage_weights keywords")
    allowed = {"method", "gae_lambda", "reward_offset"}
    for label, spec in methods.items():
        if not (isinstance(spec, Mapping) and spec.get("method") in METHODS and set(spec) <= allowed):
            raise ValueError(
                f"methods[{label!r}] must be a dict with 'method' in {METHODS} and optional "
                f"'gae_lambda', 'reward_offset'; got {spec!r}"
            )
        if spec["method"] == "gae" and critic is None:
            raise ValueError(f"methods[{label!r}] uses 'gae' but no critic was given")
    _check_int("repeats", repeats, low=2)
    _check_int("num_prompts", num_prompts)
    _check_int("num_generations", num_generations)
    out: dict[str, list[torch.Tensor]] = {label: [] for label in methods}
    for _ in range(repeats):
        batch = rollout(policy, task.sample_prompts(num_prompts, generator), num_generations, 1.0, generator)
        values = None
        if critic is not None:
            with torch.no_grad():
                values = critic(batch.input_ids)
        weights = [advantage_weights(batch, values=values, **spec) for spec in methods.values()]
        for label, g in zip(methods, policy_gradient(policy, batch.input_ids, weights), strict=True):
            out[label].append(g.detach())
    return {label: torch.stack(gs) for label, gs in out.items()}


def total_variance(samples: torch.Tensor) -> float:
    """``tr Cov(g) = sum_p Var(g_p)`` from ``[repeats, P]`` samples (Bessel-corrected)."""
    if not isinstance(samples, torch.Tensor) or samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError("samples must be a [repeats >= 2, P] tensor")
    x = samples.double()
    return float(((x - x.mean(0)) ** 2).sum() / (x.shape[0] - 1))


def bootstrap_variance_ratio(a: torch.Tensor, b: torch.Tensor, n_boot: int = 500,
                             seed: int = 0) -> tuple[float, float, float]:
    """``tr Cov(a) / tr Cov(b)`` and a 95% percentile bootstrap interval, resampling paired repeats."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
        raise ValueError("a and b must be [repeats, P] tensors of the same shape")
    _check_int("n_boot", n_boot)
    da = ((a.double() - a.double().mean(0)) ** 2).sum(1).numpy()
    db = ((b.double() - b.double().mean(0)) ** 2).sum(1).numpy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(da), size=(n_boot, len(da)))
    ratios = da[idx].sum(1) / db[idx].sum(1)
    return float(da.sum() / db.sum()), float(np.quantile(ratios, 0.025)), float(np.quantile(ratios, 0.975))


def squared_mean_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Unbiased estimate of ``||E[a] - E[b]||^2`` from paired ``[repeats, P]`` samples.

    With ``d_r = a_r - b_r`` over ``R`` repeats: ``||mean(d)||^2 - tr Cov(d) / R`` (the plain
    ``||mean(d)||^2`` is biased upwards by the noise of the mean). Used as the squared bias of an
    estimator ``a`` against an unbiased one ``b``; it can come out slightly negative when the bias
    is below the noise.
    """
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
            or a.dim() != 2 or a.shape[0] < 2:
        raise ValueError("a and b must be [repeats >= 2, P] tensors of the same shape")
    d = a.double() - b.double()
    return float(d.mean(0).square().sum() - total_variance(d) / d.shape[0])


def softmax_entropy_change(logits: torch.Tensor, advantages: torch.Tensor) -> tuple[float, float]:
    """First-order entropy change of one policy-gradient step on a softmax, two ways.

    For ``pi = softmax(z)`` and a step ``z += eta * grad_z E_pi[A]`` with ``A`` centred under ``pi``
    (``E_pi A = 0``), ``dH/d eta`` at ``eta = 0`` is ``-Cov_{a~pi}(log pi(a), pi(a) A(a))`` (Cui et
    al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models").
    Returns ``(autograd derivative, covariance formula)``; ``advantages`` are centred here.
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 1 or not logits.is_floating_point():
        raise ValueError("logits must be a 1-D floating tensor")
    if not isinstance(advantages, torch.Tensor) or advantages.shape != logits.shape:
        raise ValueError(f"advantages must be a tensor of shape {tuple(logits.shape)}")
    z = logits.detach().double()
    p = torch.softmax(z, -1)
    a = advantages.detach().double()
    a = a - (p * a).sum()
    step = p * a  # grad_z E_pi[A] with A held fixed and centred
    eta = torch.zeros((), dtype=torch.float64, requires_grad=True)
    q = torch.log_softmax(z + eta * step, -1)
    (d_h,) = torch.autograd.grad(-(q.exp() * q).sum(), eta)
    logp = torch.log(p)
    x = logp - (p * logp).sum()
    y = p * a - (p * p * a).sum()
    return float(d_h), float(-(p * x * y).sum())
