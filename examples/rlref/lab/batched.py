"""Several seeds of the lab's GRPO run trained at once: one seed dimension on every parameter tensor.

At the ``SMALL`` scale a lab run is a long chain of tiny kernels. :func:`grpo_train_seeds` stacks the
parameters of ``K`` :class:`~rlref.lab.policy.TinyCausalLM` policies into ``[K, ...]`` tensors and
runs, for all seeds together: generation, the reference log-prob pass, the loss forward/backward and
AdamW. Everything that makes a run *that* seed stays per seed, in the order :func:`grpo_train` uses:

- problems from the seed's ``prompt_sampler``/task and ``manual_seed(seed)`` generator; sampling noise
  from the seed's ``manual_seed(seed + 1)`` generator, drawn with the same shapes, in the same order,
  only while that seed still has rows to sample (so each seed consumes exactly its own random numbers);
- rewards, advantages (``adv_estimator`` and its options), the loss object (``loss_fn``; called once
  per seed and micro-batch, with that seed's global counts), gradient clipping by the seed's own global
  norm (``max_grad_norm``), ``on_nonfinite``, ``lr`` / ``weight_decay`` / ``lr_warmup_steps``,
  ``max_num_steps`` and the callback (which sees the seed's policy with up-to-date weights; weights it
  changes in place are read back before the next step, as in the sequential loop).

Each seed's History therefore matches its sequential ``grpo_train`` run up to float rounding: batched
matrix products (``bmm``) and the unfused LayerNorm affine round differently from the per-seed
kernels in the last bits, and those differences stay ~1e-6 relative over a run unless a sampled token
flips on a near-tie (see tests/lab/test_batched.py). AdamW is re-implemented on the stacked tensors
with per-seed step counts (so a seed can skip a non-finite step alone); it follows
``torch.optim.AdamW``'s single-tensor update operation by operation.

Runs that cannot share a stack are trained by :func:`grpo_train` one after the other, with the same
results: a policy that is not exactly a float32 ``TinyCausalLM`` with all parameters trainable, a
``reference`` that is not a ``TinyCausalLM`` of the same config, ``generation_dtype`` set,
``use_dynamic_sampling=True``, or ``RLREF_BATCHED=0`` in the environment. Runs are grouped by what a
stack must share (policy config, device, ``num_prompts_per_step``, ``num_generations_per_prompt``,
``temperature``, ``train_global_batch_size``, ``train_micro_batch_size``, ``cpu_threads``).

NeMo RL has no counterpart: it trains one run per job; this is how the lab affords more seeds.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rlref.lab.policy import TinyCausalLM
from rlref.lab.rollout import score_rollout
from rlref.lab.tasks import EOS_ID, PAD_ID, Task
from rlref.lab.train import (
    GRPOConfig,
    History,
    _combine_global_batches,
    _device_of,
    _draw_problems,
    _grpo_advantages,
    _grpo_step_metrics,
    _make_loss,
    _record_step,
    _reduce_metric,
    cpu_threads,
    grpo_train,
)
from rlref.losses import ClippedPGLoss, ClippedPGLossConfig, LossInputType, next_token_logprobs

__all__ = ["grpo_train_seeds", "batched_enabled"]

_ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW defaults, as the lab's _make_optimizer uses
_ADAM_EPS = 1e-8


def batched_enabled() -> bool:
    """False when the environment sets ``RLREF_BATCHED=0`` (every run then goes through grpo_train)."""
    return os.environ.get("RLREF_BATCHED", "1").strip() != "0"


# ==================================================================================================
# The stacked model
# ==================================================================================================


def _stack(modules: Sequence[nn.Module], requires_grad: bool) -> dict[str, torch.Tensor]:
    names = [n for n, _ in modules[0].named_parameters()]
    per = [dict(m.named_parameters()) for m in modules]
    out = {}
    for n in names:
        t = torch.stack([p[n].detach() for p in per]).clone()
        out[n] = t.requires_grad_(requires_grad)
    return out


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(b[:, None], F.layer_norm(x, x.shape[-1:]), w[:, None])


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x [K, N, in] @ w[k].T + b[k]`` for every seed ``k``."""
    return torch.baddbmm(b[:, None], x, w.transpose(1, 2))


def _forward(P: dict[str, torch.Tensor], cfg, ids: torch.Tensor, causal: torch.Tensor,
             last: torch.Tensor | None = None) -> torch.Tensor:
    """TinyCausalLM.forward for ``K`` stacked parameter sets: ``ids [K, B, S]`` -> logits ``[K, B, S, V]``.

    With ``last [K, B]`` only the logits at those positions are projected: ``[K, B, V]``.
    """
    K, B, S = ids.shape
    D, H = cfg.d_model, cfg.n_heads
    hd = D // H
    V = cfg.vocab_size
    emb = P["tok_emb.weight"]
    flat = ids + (torch.arange(K, device=ids.device) * V)[:, None, None]
    x = F.embedding(flat, emb.reshape(K * V, D)) + P["pos_emb.weight"][:, None, :S]
    x = x.reshape(K, B * S, D)
    allowed = causal[:S, :S]
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        h = _layer_norm(x, P[p + "ln1.weight"], P[p + "ln1.bias"])
        q, k, v = _linear(h, P[p + "qkv.weight"], P[p + "qkv.bias"]).split(D, dim=-1)
        q, k, v = (t.reshape(K * B, S, H, hd).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        att = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(K, B * S, D)
        x = x + _linear(att, P[p + "proj.weight"], P[p + "proj.bias"])
        h = F.gelu(_linear(_layer_norm(x, P[p + "ln2.weight"], P[p + "ln2.bias"]),
                           P[p + "fc.weight"], P[p + "fc.bias"]))
        x = x + _linear(h, P[p + "out.weight"], P[p + "out.bias"])
    if last is not None:
        x = x.reshape(K, B, S, D)[torch.arange(K, device=x.device)[:, None],
                                  torch.arange(B, device=x.device)[None], last]
        x = x.reshape(K, B, D)
        return torch.bmm(_layer_norm(x, P["ln_f.weight"], P["ln_f.bias"]), emb.transpose(1, 2))
    logits = torch.bmm(_layer_norm(x, P["ln_f.weight"], P["ln_f.bias"]), emb.transpose(1, 2))
    return logits.reshape(K, B, S, V)


@torch.no_grad()
def _generate(P, cfg, causal, rows: list[list], temperature: float, generators: list[torch.Generator]):
    """:func:`rlref.lab.rollout.generate` for ``K`` seeds at once (same noise draws per seed).

    Returns one ``(input_ids, token_mask, generation_logprobs, response_lengths, truncated)`` tuple per
    seed, each cut to that seed's own width ``max(prompt + max_new_tokens)`` as ``generate`` makes it.
    """
    K, B = len(rows), len(rows[0])
    device = P["tok_emb.weight"].device
    plen = torch.tensor([[len(p.prompt) for p in r] for r in rows])
    budget = torch.tensor([[p.max_new_tokens for p in r] for r in rows])
    widths = (plen + budget).amax(dim=1)
    S = int(widths.max())
    if S > cfg.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens needs {S} positions but the model's max_seq_len is "
                         f"{cfg.max_seq_len}")
    ids = torch.tensor([list(p.prompt) + [PAD_ID] * (S - len(p.prompt)) for r in rows for p in r],
                       dtype=torch.long).reshape(K, B, S).to(device)
    gen_lp = torch.zeros(K, B, S, dtype=torch.float32, device=device)
    token_mask = torch.zeros(K, B, S, dtype=torch.float32, device=device)
    cur = plen.clone()
    done = torch.zeros(K, B, dtype=torch.bool)
    kk = torch.arange(K)[:, None].expand(K, B)
    bb = torch.arange(B)[None, :].expand(K, B)
    V = cfg.vocab_size
    for step in range(int(budget.max())):
        active = ~done & (step < budget)
        seeds_on = active.any(dim=1)
        if not bool(seeds_on.any()):
            break
        length = int(cur[active].max())
        last = _forward(P, cfg, ids[:, :, :length], causal,
                        last=(cur - 1).clamp(max=length - 1).to(device)).float()
        noise = torch.full((K, B, V), 0.5, dtype=torch.float32)
        for k in seeds_on.nonzero().flatten().tolist():
            noise[k] = torch.rand((B, V), generator=generators[k], dtype=torch.float32)
        noise = noise.clamp_min(1e-20)
        scaled = last / temperature
        gumbel = -torch.log(-torch.log(noise)).to(device)
        tok = (scaled + gumbel).argmax(-1)
        logp = torch.log_softmax(scaled, -1).gather(-1, tok[..., None]).squeeze(-1)
        ka, ba, pa = kk[active].to(device), bb[active].to(device), cur[active].to(device)
        ids[ka, ba, pa] = tok[ka, ba]
        gen_lp[ka, ba, pa] = logp[ka, ba]
        token_mask[ka, ba, pa] = 1.0
        cur[active] += 1
        done |= active & (tok.cpu() == EOS_ID)
    out = []
    for k in range(K):
        w = int(widths[k])
        out.append((ids[k, :, :w], token_mask[k, :, :w], gen_lp[k, :, :w], (cur[k] - plen[k]).to(device),
                    (~done[k]).to(device)))
    return out


def _pad_stack(tensors: Sequence[torch.Tensor], value) -> torch.Tensor:
    S = max(t.shape[1] for t in tensors)
    return torch.stack([F.pad(t, (0, S - t.shape[1]), value=value) for t in tensors])


# ==================================================================================================
# AdamW on stacked tensors, per-seed step counts and hyperparameters
# ==================================================================================================


def _per_seed(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A float32 ``[K, 1, ..., 1]`` tensor broadcasting over ``like [K, ...]`` (Python float -> float32,
    the cast torch's kernels apply to a scalar argument)."""
    shape = (len(values),) + (1,) * (like.dim() - 1)
    return torch.tensor(values, dtype=torch.float64).to(like.dtype).reshape(shape).to(like.device)


@torch.no_grad()
def _adamw_step(params: dict, state: dict, steps: list[int], lrs: list[float], wds: list[float],
                apply: list[bool]) -> None:
    """``torch.optim.AdamW`` (single-tensor path, default betas/eps) for each seed ``k`` with ``apply[k]``.

    Seeds with ``apply[k] = False`` keep their parameters, moments and step count (a skipped step).
    """
    beta1, beta2 = _ADAM_BETAS
    new_steps = [s + 1 if a else s for s, a in zip(steps, apply, strict=True)]
    # Bias corrections in Python floats, as torch computes them from the step count.
    step_size = [-(lr / (1 - beta1 ** max(s, 1))) for lr, s in zip(lrs, new_steps, strict=True)]
    bc2_sqrt = [(1 - beta2 ** max(s, 1)) ** 0.5 for s in new_steps]
    decay = [1 - lr * wd for lr, wd in zip(lrs, wds, strict=True)]
    all_apply = all(apply)
    for name, p in params.items():
        g = p.grad
        if g is None:
            continue
        exp_avg, exp_avg_sq = state.setdefault(name, (torch.zeros_like(p), torch.zeros_like(p)))
        if all_apply:
            pd, ea, eas = p.data, exp_avg, exp_avg_sq
        else:
            pd, ea, eas = p.data.clone(), exp_avg.clone(), exp_avg_sq.clone()
        if any(wd != 0 for wd in wds):
            pd.mul_(_per_seed(decay, pd))
        ea.lerp_(g, 1 - beta1)
        eas.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (eas.sqrt() / _per_seed(bc2_sqrt, pd)).add_(_ADAM_EPS)
        pd.add_(ea.mul(_per_seed(step_size, pd)).div_(denom))
        if not all_apply:
            keep = torch.tensor(apply, device=pd.device).reshape((-1,) + (1,) * (pd.dim() - 1))
            p.data.copy_(torch.where(keep, pd, p.data))
            exp_avg.copy_(torch.where(keep, ea, exp_avg))
            exp_avg_sq.copy_(torch.where(keep, eas, exp_avg_sq))
    steps[:] = new_steps


# ==================================================================================================
# One group of seeds
# ==================================================================================================


class _Run:
    """The per-seed state of one run inside a stack."""

    def __init__(self, index, policy, task, cfg, sampler, callback, device):
        self.index = index
        self.policy = policy
        self.task = task
        self.cfg = cfg
        self.sampler = sampler
        self.callback = callback
        self.loss_fn = _make_loss(cfg.loss_fn, ClippedPGLoss, ClippedPGLossConfig)
        self.loss_cfg = getattr(self.loss_fn, "config", None)
        self.prompt_gen = torch.Generator().manual_seed(cfg.seed)
        self.sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.history = History(meta={"config": cfg, "algorithm": "grpo", "loss_fn": repr(self.loss_fn)})
        self.sched_steps = 0
        self.param_ids = [id(p) for p in policy.parameters()]

    @property
    def lr(self) -> float:
        """LambdaLR's ``lr * min(1, (i + 1) / warmup)`` after ``i`` scheduler steps."""
        w = self.cfg.lr_warmup_steps
        return self.cfg.lr if w == 0 else self.cfg.lr * min(1.0, (self.sched_steps + 1) / w)


def _call_loss(loss_fn, logits, curr, mb, gvs, gvt):
    input_type = getattr(loss_fn, "input_type", LossInputType.LOGPROB)
    if input_type == LossInputType.LOGIT or getattr(input_type, "name", None) == "LOGIT":
        return loss_fn(logits=logits, data=mb, global_valid_seqs=gvs, global_valid_toks=gvt)
    return loss_fn(next_token_logprobs=curr, data=mb, global_valid_seqs=gvs, global_valid_toks=gvt)


def _slice_rows(data: dict, sl: slice, B: int) -> dict:
    return {k: v[sl] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else v
            for k, v in data.items()}


class _Group:
    def __init__(self, runs: list[_Run], references: list[nn.Module], device: torch.device):
        self.runs = runs
        self.device = device
        self.cfg0 = runs[0].cfg
        self.model_cfg = runs[0].policy.config
        self.causal = runs[0].policy.causal.to(device)
        for r in runs:
            r.policy.to(device)
            r.history.meta["stack_size"] = len(runs)
        self.P = _stack([r.policy for r in runs], requires_grad=True)
        self.R = _stack([m.to(device) for m in references], requires_grad=False)
        self.adam_state: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.adam_steps = [0] * len(runs)

    # ---------------------------------------------------------------- bookkeeping
    @torch.no_grad()
    def _write_back(self, k: int) -> None:
        for name, p in self.runs[k].policy.named_parameters():
            p.copy_(self.P[name][k])

    @torch.no_grad()
    def _read_back(self, k: int) -> None:
        run = self.runs[k]
        if [id(p) for p in run.policy.parameters()] != run.param_ids:
            raise RuntimeError("a callback replaced a parameter of the policy; grpo_train_seeds cannot "
                               "follow that (pass batched=False to train such runs one by one)")
        for name, p in run.policy.named_parameters():
            self.P[name][k].copy_(p)

    def _keep(self, keep: list[int]) -> None:
        """Drop the seeds not in ``keep`` from the stack (their runs have ended)."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.P = {n: t.detach()[idx].clone().requires_grad_(True) for n, t in self.P.items()}
        self.R = {n: t[idx] for n, t in self.R.items()}
        self.adam_state = {n: (a[idx].clone(), b[idx].clone()) for n, (a, b) in self.adam_state.items()}
        self.adam_steps = [self.adam_steps[i] for i in keep]
        self.runs = [self.runs[i] for i in keep]

    # ---------------------------------------------------------------- training
    def _forward_train(self, ids: torch.Tensor):
        """Training forward of all seeds: ``(logits / T [K, b, S, V], next-token log-probs [K, b, S-1],
        exact token entropy [K, b, S-1] (no grad))``."""
        logits = _forward(self.P, self.model_cfg, ids, self.causal).float() / self.cfg0.temperature
        K, b, S = ids.shape
        curr = next_token_logprobs(logits.reshape(K * b, S, -1), ids.reshape(K * b, S)).reshape(K, b, S - 1)
        with torch.no_grad():
            lp = torch.log_softmax(logits[:, :, :-1], -1)
            ent_tok = -(lp.exp() * lp).sum(-1)
        return logits, curr, ent_tok

    def _train_step(self, ids_all, batches_data, widths, B, first_forward=None):
        """train_step for all seeds: global batches -> micro-batches -> per-seed clip -> AdamW.

        ``first_forward``: the output of :meth:`_forward_train` on the whole batch, reused when the
        step is one global batch of one micro-batch.
        """
        runs, K = self.runs, len(self.runs)
        cfg0 = self.cfg0
        gbs = B if cfg0.train_global_batch_size is None else min(cfg0.train_global_batch_size, B)
        per_gb: list[list[dict]] = [[] for _ in range(K)]
        halted = [False] * K
        for start in range(0, B, gbs):
            rs = slice(start, start + gbs)
            n_rows = len(range(B)[rs])
            mb_rows = n_rows if cfg0.train_micro_batch_size is None else cfg0.train_micro_batch_size
            for p in self.P.values():
                p.grad = None
            gb = [_slice_rows(d, rs, B) for d in batches_data]
            sms = [d["sample_mask"].float() for d in gb]
            masks = [d["token_mask"][:, 1:].float() * sm[:, None] for d, sm in zip(gb, sms, strict=True)]
            gvs = [sm.sum() for sm in sms]
            gvt = [m.sum() for m in masks]
            collected: list[dict[str, list[float]]] = [{} for _ in range(K)]
            ent = [0.0] * K
            n_mb = 0
            for s in range(0, n_rows, mb_rows):
                sl = slice(s, s + mb_rows)
                if first_forward is not None:
                    logits, curr, ent_tok = first_forward
                    first_forward = None
                else:
                    logits, curr, ent_tok = self._forward_train(ids_all[:, rs][:, sl])
                total = None
                for k, run in enumerate(runs):
                    w = widths[k]
                    mb = _slice_rows(gb[k], sl, n_rows)
                    loss, metrics = _call_loss(run.loss_fn, logits[k, :, :w], curr[k, :, : w - 1], mb,
                                               gvs[k], gvt[k])
                    total = loss if total is None else total + loss
                    ent[k] += float((ent_tok[k, :, : w - 1] * masks[k][sl]).sum())
                    for key, v in metrics.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            collected[k].setdefault(key, []).append(float(v))
                total.backward()
                n_mb += 1
            self._finish_global_batch(per_gb, halted, collected, ent, gvs, gvt, n_mb)
            if all(halted):
                break
        for p in self.P.values():
            p.grad = None
        return [_combine_global_batches(g) for g in per_gb]

    def _finish_global_batch(self, per_gb, halted, collected, ent, gvs, gvt, n_mb):
        """Per-seed gradient clipping, metrics and non-finite handling, then one AdamW step."""
        runs, K = self.runs, len(self.runs)
        grads = [p.grad for p in self.P.values() if p.grad is not None]
        norms = []
        for k in range(K):  # torch.nn.utils.clip_grad_norm_, per seed
            per_param = [torch.linalg.vector_norm(g[k], 2.0) for g in grads]
            norms.append(torch.linalg.vector_norm(torch.stack(per_param), 2.0))
        coefs = []
        for k, run in enumerate(runs):
            clip = run.cfg.max_grad_norm if run.cfg.max_grad_norm is not None else math.inf
            coefs.append(torch.clamp(clip / (norms[k] + 1e-6), max=1.0))
        coef = torch.stack(coefs)
        for g in grads:
            g.mul_(coef.reshape((K,) + (1,) * (g.dim() - 1)))
        apply, ms = [], []
        for k, run in enumerate(runs):
            m = {key: _reduce_metric(key, v) for key, v in collected[k].items()}
            m["global_valid_seqs"] = float(gvs[k])
            m["global_valid_toks"] = float(gvt[k])
            m["lab/entropy_sum"] = ent[k]
            m["lab/num_microbatches"] = float(n_mb)
            grad_norm = float(norms[k])
            loss_value = m.get("loss", math.nan)
            nonfinite = not (math.isfinite(grad_norm) and math.isfinite(loss_value))
            m["grad_norm"] = grad_norm
            m["lr"] = float(run.lr)
            m["lab/nonfinite"] = float(nonfinite)
            skip = nonfinite and run.cfg.on_nonfinite in ("skip", "stop")
            if nonfinite and run.cfg.on_nonfinite == "step" and not halted[k]:
                warnings.warn(f"non-finite loss ({loss_value}) or grad norm ({grad_norm}); stepping anyway "
                              "(on_nonfinite='step', like NeMo RL's DTensor path)", RuntimeWarning,
                              stacklevel=4)
            apply.append(not skip and not halted[k])
            m["lab/skipped_step"] = float(skip)
            m["lab/stop"] = float(nonfinite and run.cfg.on_nonfinite == "stop")
            toks = m.pop("global_valid_toks")
            m["lab/entropy"] = m.pop("lab/entropy_sum") / toks if toks > 0 else math.nan
            m["global_valid_toks"] = toks
            ms.append(m)
        _adamw_step(self.P, self.adam_state, self.adam_steps, [r.lr for r in runs],
                    [r.cfg.weight_decay for r in runs], apply)
        for k, run in enumerate(runs):
            if halted[k]:
                continue
            if run.cfg.lr_warmup_steps > 0:
                run.sched_steps += 1
            per_gb[k].append(ms[k])
            if ms[k]["lab/stop"]:
                halted[k] = True

    @torch.no_grad()
    def _logprobs(self, P, ids_all):
        """``sequence_logprobs`` for every seed: ``[K, B, S]`` with column 0 = 0."""
        K, B, S = ids_all.shape
        logits = _forward(P, self.model_cfg, ids_all, self.causal).float() / self.cfg0.temperature
        lp = next_token_logprobs(logits.reshape(K * B, S, -1), ids_all.reshape(K * B, S))
        return F.pad(lp.reshape(K, B, S - 1), (1, 0))

    def step(self, step: int) -> None:
        """One GRPO step of every seed in the stack (the body of grpo_train's loop)."""
        runs = self.runs
        K = len(runs)
        cfg0 = self.cfg0
        G = cfg0.num_generations_per_prompt
        t_step = time.perf_counter()
        rows = []
        for run in runs:
            problems = _draw_problems(run.task, run.sampler, step, run.history, run.cfg.num_prompts_per_step,
                                      run.prompt_gen)
            rows.append([p for p in problems for _ in range(G)])
        if len({len(r) for r in rows}) != 1:
            raise ValueError("prompt_sampler returned a different number of problems for different seeds "
                             f"at step {step} ({sorted({len(r) // G for r in rows})}); grpo_train_seeds "
                             "needs the same number for every seed of a stack (pass batched=False)")
        B = len(rows[0])
        t0 = time.perf_counter()
        generated = _generate(self.P, self.model_cfg, self.causal, rows, cfg0.temperature,
                              [r.sample_gen for r in runs])
        batches = [score_rollout(rw, *g) for rw, g in zip(rows, generated, strict=True)]
        gen_time = time.perf_counter() - t0

        t0 = time.perf_counter()
        widths = [b.input_ids.shape[1] for b in batches]
        ids_all = _pad_stack([b.input_ids for b in batches], PAD_ID)
        ref_all = self._logprobs(self.R, ids_all)
        one_pass = (cfg0.train_global_batch_size is None or cfg0.train_global_batch_size >= B) and (
            cfg0.train_micro_batch_size is None or cfg0.train_micro_batch_size >= B)
        first_forward = None
        if one_pass:  # the training forward doubles as the prev_logprobs pass: same weights, same rows
            first_forward = self._forward_train(ids_all)
            prev_all = F.pad(first_forward[1].detach(), (1, 0))
        else:
            prev_all = self._logprobs(self.P, ids_all)
        lp_time = time.perf_counter() - t0

        t0 = time.perf_counter()
        advs, masks, batches_data = [], [], []
        for k, (run, b) in enumerate(zip(runs, batches, strict=True)):
            prev = prev_all[k, :, : widths[k]].contiguous()
            ref = ref_all[k, :, : widths[k]].contiguous()
            mask = b.token_mask * b.sample_mask[:, None]
            a = _grpo_advantages(run.cfg, run.loss_cfg, b, mask, prev, ref)
            d = b.data()
            d.update(advantages=a, prev_logprobs=prev, reference_policy_logprobs=ref)
            advs.append(a)
            masks.append(mask)
            batches_data.append(d)
        adv_time = time.perf_counter() - t0

        t0 = time.perf_counter()
        tms = self._train_step(ids_all, batches_data, widths, B, first_forward)
        train_time = time.perf_counter() - t0
        total = time.perf_counter() - t_step

        finished = []
        for k, (run, b) in enumerate(zip(runs, batches, strict=True)):
            # Wall-clock keys: this seed's share (1/K) of the stacked step's phases.
            metrics = {
                "timing/train/policy_and_reference_logprobs": lp_time / K,
                "timing/train/advantage_calculation": adv_time / K,
                "timing/train/policy_training": train_time / K,
                "timing/train/generation": gen_time / K,
                "timing/train/total_step_time": total / K,
            }
            n_tokens = _grpo_step_metrics(metrics, b, advs[k], masks[k], tms[k], step)
            metrics.update({
                "performance/tokens_per_sec": n_tokens * K / total if total > 0 else math.nan,
                "performance/generation_tokens_per_sec":
                    n_tokens * K / gen_time if gen_time > 0 else math.nan,
            })
            if run.callback is not None:
                self._write_back(k)
            stopped = _record_step(run.history, metrics, tms[k]["lab/stop"], run.callback, step, run.policy)
            if run.callback is not None:
                self._read_back(k)
            if not stopped and step == run.cfg.max_num_steps - 1:
                run.history.meta["stopped_reason"] = "max_num_steps"
                stopped = True
            if stopped:
                finished.append(k)
        for k in finished:
            self._write_back(k)
            self.runs[k].policy.train()
        if finished:
            self._keep([k for k in range(K) if k not in finished])


# ==================================================================================================
# Public entry point
# ==================================================================================================


def _per_run(name: str, value, n: int, *, is_single: Callable[[object], bool]) -> list:
    """``value`` for each of ``n`` runs: a single value is shared, a list/tuple gives one per run."""
    if is_single(value):
        return [value] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} policies")
        return list(value)
    raise TypeError(f"{name} must be one value for all runs or a list with one per policy, "
                    f"got {type(value).__name__}")


def _stack_key(policy: nn.Module, cfg: GRPOConfig, reference) -> tuple | None:
    """What a stack must share, or None when this run must go through grpo_train."""
    if type(policy) is not TinyCausalLM:
        return None
    params = list(policy.parameters())
    if any(p.dtype != torch.float32 or not p.requires_grad for p in params):
        return None
    if cfg.generation_dtype not in (None, torch.float32) or cfg.use_dynamic_sampling:
        return None
    if reference is not None and (type(reference) is not TinyCausalLM or reference.config != policy.config):
        return None
    device = _device_of(policy, cfg.device)
    return (policy.config, str(device), cfg.num_prompts_per_step, cfg.num_generations_per_prompt,
            cfg.temperature, cfg.train_global_batch_size, cfg.train_micro_batch_size, cfg.cpu_threads)


def _train_stack(indices, policies, tasks, configs, samplers, callbacks, references) -> list[History]:
    cfg0 = configs[indices[0]]
    device = _device_of(policies[indices[0]], cfg0.device)
    with cpu_threads(cfg0.cpu_threads, device):
        runs = []
        for i in indices:
            if tasks[i] is None and samplers[i] is None:
                raise ValueError("give a task or a prompt_sampler")
            if tasks[i] is not None and not isinstance(tasks[i], Task):
                raise TypeError(f"task must be a rlref.lab Task (from make_task), got "
                                f"{type(tasks[i]).__name__}")
            runs.append(_Run(i, policies[i], tasks[i], configs[i], samplers[i], callbacks[i], device))
        refs = [references[i] if references[i] is not None else policies[i] for i in indices]
        group = _Group(runs, refs, device)  # stacks a copy: the reference is the initial weights
        histories = [r.history for r in runs]
        step = 0
        while group.runs:
            group.step(step)
            step += 1
        return histories


def grpo_train_seeds(policies: Sequence[nn.Module], task: Task | None | Sequence[Task | None],
                     configs: Sequence[GRPOConfig], *,
                     prompt_sampler=None, callback=None, reference=None,
                     batched: bool = True, max_stack: int | None = None) -> list[History]:
    """Train ``policies[i]`` with ``configs[i]`` like ``grpo_train(policies[i], task, configs[i], ...)``,
    all runs that can share a stack at once; returns the Histories in the order of ``policies``.

    ``task``, ``prompt_sampler``, ``callback`` and ``reference`` are one value shared by every run or a
    list with one per policy (give a list when the object keeps per-run state, e.g. a curriculum, a
    :class:`rlref.multi_objective.ComponentLog` or a monitor). Callbacks are called after each step in
    seed order within a step (the sequential loop calls all of run 0's steps first); each sees its own
    policy with the current weights, and weights it changes in place are used from the next step on.
    The policies are trained in place, as by ``grpo_train``.

    ``batched=False`` (or ``RLREF_BATCHED=0``) trains the runs one by one with ``grpo_train``.
    ``max_stack`` caps the seeds per stack (GPU memory at the FULL scale). Which runs cannot be stacked
    and are trained by ``grpo_train`` instead: see the module docstring.
    """
    if isinstance(policies, nn.Module) or not isinstance(policies, Sequence) or not policies:
        raise TypeError("policies must be a non-empty list of modules (one per run)")
    n = len(policies)
    if not all(isinstance(p, nn.Module) for p in policies):
        raise TypeError("every entry of policies must be a torch.nn.Module")
    if len({id(p) for p in policies}) != n:
        raise ValueError("policies must be distinct modules (each run trains its own policy)")
    if isinstance(configs, GRPOConfig) or not isinstance(configs, Sequence):
        raise TypeError("configs must be a list of GRPOConfig, one per policy "
                        "(e.g. [base.replace(seed=s) for s in seeds])")
    if len(configs) != n:
        raise ValueError(f"configs has {len(configs)} entries for {n} policies")
    if not all(isinstance(c, GRPOConfig) for c in configs):
        raise TypeError("every entry of configs must be a GRPOConfig")
    if max_stack is not None and (isinstance(max_stack, bool) or not isinstance(max_stack, int)
                                  or max_stack < 1):
        raise ValueError(f"max_stack must be a positive int or None, got {max_stack!r}")
    tasks = _per_run("task", task, n, is_single=lambda v: v is None or isinstance(v, Task))
    samplers = _per_run("prompt_sampler", prompt_sampler, n, is_single=lambda v: v is None or callable(v))
    callbacks = _per_run("callback", callback, n, is_single=lambda v: v is None or callable(v))
    references = _per_run("reference", reference, n,
                          is_single=lambda v: v is None or isinstance(v, nn.Module))

    groups: dict[tuple, list[int]] = {}
    alone: list[int] = []
    for i in range(n):
        key = _stack_key(policies[i], configs[i], references[i]) if batched and batched_enabled() else None
        if key is None:
            alone.append(i)
        else:
            groups.setdefault(key, []).append(i)
    cap = max_stack or n
    stacks = [idx[s : s + cap] for idx in groups.values() for s in range(0, len(idx), cap)]
    alone += [idx[0] for idx in stacks if len(idx) == 1]
    out: list[History | None] = [None] * n
    for idx in stacks:
        if len(idx) > 1:
            for i, h in zip(idx, _train_stack(idx, policies, tasks, configs, samplers, callbacks, references),
                            strict=True):
                out[i] = h
    for i in sorted(alone):
        out[i] = grpo_train(policies[i], tasks[i], configs[i], prompt_sampler=samplers[i],
                            callback=callbacks[i], reference=references[i])
    return out
