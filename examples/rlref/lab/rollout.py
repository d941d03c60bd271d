"""Rollouts: sample responses, record generation log-probs, score them, lay the batch out like NeMo RL.

Layout (NeMo RL's, see ``rlref.losses``): every per-token tensor is ``[B, S]`` with the prompt and
the response right-padded with PAD; column ``t`` of a log-prob tensor holds ``log p(token_t | tokens
before t)`` (column 0 holds 0); ``token_mask`` is 1 on the response tokens (the EOS included);
``sample_mask`` ``[B]`` is 1 for rows that count. The losses drop column 0 and pair column ``t + 1``
with ``next_token_logprobs[:, t]``.

The lab scores every token under the *sampling* distribution ``softmax(logits / temperature)`` both
when generating and when training, so at ``temperature != 1`` the generation and training log-probs
still describe the same distribution.

NeMo RL counterparts: generation by the inference backend chosen with ``policy.generation.backend``
(nemo_rl/algorithms/grpo.py:1275), which reports ``generation_logprobs``; ``prev_logprobs`` and
``reference_policy_logprobs`` computed by the training framework (the ``policy_and_reference_logprobs``
timer, nemo_rl/algorithms/grpo.py:2832-3569).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import nn

from rlref.lab.tasks import EOS_ID, PAD_ID, Problem, decode, response_content, score_responses
from rlref.losses import next_token_logprobs

__all__ = [
    "RolloutBatch", "generate", "rollout", "sequence_logprobs", "make_generation_model", "refit",
    "pad_sequences", "token_entropy",
]


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    return float(temperature)


def pad_sequences(seqs: Sequence[Sequence[int]], length: int | None = None,
                  pad: int = PAD_ID) -> torch.Tensor:
    """Right-pad integer sequences into a ``[B, length]`` int64 tensor (``length`` = longest)."""
    if len(seqs) == 0:
        raise ValueError("need at least one sequence")
    longest = max(len(s) for s in seqs)
    length = longest if length is None else length
    if length < longest:
        raise ValueError(f"length={length} is shorter than the longest sequence ({longest})")
    out = torch.full((len(seqs), length), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def make_generation_model(policy: nn.Module, generation_dtype: torch.dtype | None = None) -> nn.Module:
    """The model that generates: ``policy`` itself, or a frozen copy cast to ``generation_dtype``.

    A bfloat16 copy plays the role of an inference engine running at lower precision than the fp32
    training model, so ``generation_logprobs`` differ slightly from ``prev_logprobs`` (what NeMo RL's
    ``use_importance_sampling_correction`` and ``token_mult_prob_error`` are about). Call
    :func:`refit` after every optimizer step to copy the new weights in.
    """
    if not isinstance(policy, nn.Module):
        raise TypeError(f"policy must be a torch.nn.Module, got {type(policy).__name__}")
    if generation_dtype is None or generation_dtype == next(policy.parameters()).dtype:
        return policy
    if not isinstance(generation_dtype, torch.dtype) or not generation_dtype.is_floating_point:
        raise TypeError(f"generation_dtype must be a floating torch.dtype, got {generation_dtype!r}")
    gen = copy.deepcopy(policy).to(generation_dtype)
    gen.eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen


@torch.no_grad()
def refit(generation_model: nn.Module, policy: nn.Module) -> None:
    """Copy ``policy``'s weights into ``generation_model`` (cast to its dtype); no-op if they are one.

    NeMo RL: the weight transfer timed as ``prepare_for_generation/transfer_and_update_weights``.
    """
    if generation_model is policy:
        return
    for dst, src in zip(generation_model.parameters(), policy.parameters(), strict=True):
        dst.copy_(src.detach().to(dst.dtype))


@torch.no_grad()
def generate(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
             temperature: float = 1.0, generator: torch.Generator | None = None):
    """Sample a response for every prompt, stopping a row at EOS or after its ``max_new_tokens``.

    Sampling is Gumbel-max on ``logits / temperature`` with noise drawn on the CPU from
    ``generator`` (so CPU and GPU runs draw the same noise); ``temperature=0`` is greedy.
    Returns ``(input_ids [B, S] int64, token_mask [B, S] float32, generation_logprobs [B, S]
    float32, response_lengths [B] int64, truncated [B] bool)``, all on the model's device.
    ``generation_logprobs[b, t] = log softmax(logits / T)`` of the sampled token ``t``
    (``log softmax(logits)`` when greedy), computed in float32 from the model's logits.
    """
    temperature = _check_temperature(temperature)
    B = len(prompts)
    if B == 0:
        raise ValueError("prompts is empty")
    if isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool):
        budgets = [max_new_tokens] * B
    else:
        budgets = list(max_new_tokens)
        if len(budgets) != B:
            raise ValueError(f"max_new_tokens has {len(budgets)} entries for {B} prompts")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in budgets):
        raise ValueError(f"max_new_tokens must be positive ints, got {budgets}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    plen = torch.tensor([len(p) for p in prompts])
    budget = torch.tensor(budgets)
    S = int((plen + budget).max())
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if max_len is not None and S > max_len:
        raise ValueError(
            f"prompt + max_new_tokens needs {S} positions but the model's max_seq_len is {max_len}"
        )
    ids = pad_sequences(prompts, S).to(device)
    gen_lp = torch.zeros(B, S, dtype=torch.float32, device=device)
    token_mask = torch.zeros(B, S, dtype=torch.float32, device=device)
    cur = plen.clone()  # next write position per row (CPU)
    done = torch.zeros(B, dtype=torch.bool)
    rows = torch.arange(B)
    was_training = model.training
    model.eval()
    try:
        for step in range(int(budget.max())):
            active = ~done & (step < budget)
            if not bool(active.any()):
                break
            length = int(cur[active].max())
            logits = model(ids[:, :length])
            last = logits[rows.to(device), (cur - 1).clamp(max=length - 1).to(device)].float()
            noise = torch.rand(last.shape, generator=generator, dtype=torch.float32).clamp_min(1e-20)
            if temperature == 0:
                scaled = last
                tok = scaled.argmax(-1)
            else:
                scaled = last / temperature
                gumbel = -torch.log(-torch.log(noise)).to(device)
                tok = (scaled + gumbel).argmax(-1)
            logp = torch.log_softmax(scaled, -1).gather(-1, tok[:, None]).squeeze(-1)
            idx = rows[active]
            pos = cur[active]
            ids[idx.to(device), pos.to(device)] = tok[idx.to(device)]
            gen_lp[idx.to(device), pos.to(device)] = logp[idx.to(device)]
            token_mask[idx.to(device), pos.to(device)] = 1.0
            cur[active] += 1
            done |= active & (tok.cpu() == EOS_ID)
    finally:
        model.train(was_training)
    response_lengths = (cur - plen).to(device)
    truncated = (~done).to(device)
    return ids, token_mask, gen_lp, response_lengths, truncated


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, temperature: float = 1.0,
                      micro_batch_size: int | None = None) -> torch.Tensor:
    """Log-probs of ``input_ids`` under ``model`` in the NeMo RL ``[B, S]`` layout (column 0 = 0), no grad.

    ``out[:, 1:] = next_token_logprobs(model(input_ids) / T, input_ids)`` (``T = temperature``, 1
    when 0). This is how the lab fills ``prev_logprobs`` (the training model before the update) and
    ``reference_policy_logprobs`` (the frozen reference).
    """
    temperature = _check_temperature(temperature) or 1.0
    B = input_ids.shape[0]
    mb = B if micro_batch_size is None else micro_batch_size
    if isinstance(mb, bool) or not isinstance(mb, int) or mb < 1:
        raise ValueError(f"micro_batch_size must be a positive int or None, got {micro_batch_size!r}")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, B, mb):
                chunk = input_ids[s : s + mb]
                logits = model(chunk).float() / temperature
                out[s : s + mb, 1:] = next_token_logprobs(logits, chunk)
    finally:
        model.train(was_training)
    return out


def token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over masked positions of the exact entropy ``-sum_v p log p`` of ``softmax(logits[:, :-1])``.

    ``logits`` ``[B, S, V]``; ``mask`` ``[B, S-1]`` (the positions that predict response tokens).
    Divide by the mask's sum for the mean. Lab-only diagnostic (NeMo RL logs ``approx_entropy``, an
    estimate from the sampled tokens).
    """
    logp = torch.log_softmax(logits[:, :-1].float(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    return (ent * mask).sum()


@dataclass
class RolloutBatch:
    """One step's samples in NeMo RL's layout; ``data()`` gives the dict the losses take.

    Rows are grouped: the ``num_generations_per_prompt`` responses to one problem are contiguous.
    ``prompt_ids`` ``[B, P]`` holds each row's prompt (PAD-padded); identical rows form one GRPO group.
    """

    problems: list[Problem]
    input_ids: torch.Tensor
    token_mask: torch.Tensor
    sample_mask: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_lengths: torch.Tensor
    response_lengths: torch.Tensor
    generation_logprobs: torch.Tensor
    truncated: torch.Tensor
    rewards: torch.Tensor
    reward_components: dict[str, torch.Tensor]
    correct: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def responses(self) -> list[list[int]]:
        """Each row's generated tokens (EOS included, padding excluded)."""
        out = []
        for ids, p, n in zip(self.input_ids.tolist(), self.prompt_lengths.tolist(),
                             self.response_lengths.tolist(), strict=False):
            out.append(ids[p : p + n])
        return out

    def texts(self) -> list[str]:
        """Each row as ``"<prompt> -> <response>"`` text (for printing samples in a notebook)."""
        pairs = zip(self.problems, self.responses, strict=True)
        return [f"{decode(p.prompt)} -> {decode(r)}" for p, r in pairs]

    def select(self, index) -> RolloutBatch:
        """The rows ``index`` (a list or 1-D tensor of row numbers, or a bool mask)."""
        idx = torch.as_tensor(index)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(-1)
        idx_list = idx.tolist()
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "problems":
                kw[f.name] = [v[i] for i in idx_list]
            elif isinstance(v, dict):
                kw[f.name] = {k: t[idx.to(t.device)] for k, t in v.items()}
            else:
                kw[f.name] = v[idx.to(v.device)]
        return RolloutBatch(**kw)

    @staticmethod
    def cat(batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """Concatenate batches row-wise (sequence and prompt lengths padded to the longest)."""
        if not batches:
            raise ValueError("need at least one batch")
        S = max(b.input_ids.shape[1] for b in batches)
        P = max(b.prompt_ids.shape[1] for b in batches)

        def padto(t, n, value):
            return torch.nn.functional.pad(t, (0, n - t.shape[1]), value=value)

        comp_names = sorted({k for b in batches for k in b.reward_components})
        extra_names = sorted(set.intersection(*(set(b.extras) for b in batches)))
        return RolloutBatch(
            problems=[p for b in batches for p in b.problems],
            input_ids=torch.cat([padto(b.input_ids, S, PAD_ID) for b in batches]),
            token_mask=torch.cat([padto(b.token_mask, S, 0.0) for b in batches]),
            sample_mask=torch.cat([b.sample_mask for b in batches]),
            prompt_ids=torch.cat([padto(b.prompt_ids, P, PAD_ID) for b in batches]),
            prompt_lengths=torch.cat([b.prompt_lengths for b in batches]),
            response_lengths=torch.cat([b.response_lengths for b in batches]),
            generation_logprobs=torch.cat([padto(b.generation_logprobs, S, 0.0) for b in batches]),
            truncated=torch.cat([b.truncated for b in batches]),
            rewards=torch.cat([b.rewards for b in batches]),
            reward_components={
                k: torch.cat([b.reward_components.get(k, torch.zeros_like(b.rewards)) for b in batches])
                for k in comp_names
            },
            correct=torch.cat([b.correct for b in batches]),
            extras={k: torch.cat([padto(b.extras[k], S, 0.0) if b.extras[k].dim() == 2 else b.extras[k]
                                  for b in batches]) for k in extra_names},
        )

    def data(self) -> dict[str, torch.Tensor]:
        """The loss-function ``data`` dict: masks, ``generation_logprobs``, ``rewards``, plus ``extras``
        (``prev_logprobs``, ``reference_policy_logprobs``, ``advantages`` once the trainer adds them)."""
        out = {
            "token_mask": self.token_mask,
            "sample_mask": self.sample_mask,
            "generation_logprobs": self.generation_logprobs,
            "rewards": self.rewards,
        }
        out.update(self.extras)
        return out


def rollout(policy: nn.Module, problems: Sequence[Problem], num_generations_per_prompt: int = 1,
            temperature: float = 1.0, generator: torch.Generator | None = None,
            generation_model: nn.Module | None = None) -> RolloutBatch:
    """Generate ``num_generations_per_prompt`` responses per problem and score them.

    ``generation_model`` (default ``policy``) is the model that samples, e.g. a bfloat16 copy from
    :func:`make_generation_model`. The total reward is the unweighted sum of the row's
    ``reward/<name>`` components, as in NeMo RL (nemo_rl/experience/rollouts.py:960-975).
    ``correct`` is the task's correctness check, whatever the chosen components.

    NeMo RL: ``grpo.num_generations_per_prompt``; the samples of one prompt are repeated contiguously.
    """
    if not problems:
        raise ValueError("problems is empty")
    if not all(isinstance(p, Problem) for p in problems):
        raise TypeError("problems must be rlref.lab.tasks.Problem objects (from task.sample_prompts)")
    G = num_generations_per_prompt
    if isinstance(G, bool) or not isinstance(G, int) or G < 1:
        raise ValueError(f"num_generations_per_prompt must be a positive int, got {G!r}")
    model = policy if generation_model is None else generation_model
    rows = [p for p in problems for _ in range(G)]
    generated = generate(model, [p.prompt for p in rows], [p.max_new_tokens for p in rows], temperature,
                         generator)
    return score_rollout(rows, *generated)


def score_rollout(rows: Sequence[Problem], ids: torch.Tensor, tm: torch.Tensor, glp: torch.Tensor,
                  rlen: torch.Tensor, trunc: torch.Tensor) -> RolloutBatch:
    """Score what :func:`generate` returned for the problems ``rows`` (one per row) into a RolloutBatch."""
    device = ids.device
    plen = torch.tensor([len(p.prompt) for p in rows])
    responses = [r[pl : pl + n] for r, pl, n in zip(ids.tolist(), plen.tolist(), rlen.tolist(), strict=False)]
    comps = score_responses(rows, responses)
    total = torch.stack(list(comps.values())).sum(0)
    correct = torch.tensor(
        [float(p.task.is_correct(p, response_content(r))) for p, r in zip(rows, responses, strict=False)]
    )
    return RolloutBatch(
        problems=rows,
        input_ids=ids,
        token_mask=tm,
        sample_mask=torch.ones(len(rows), device=device),
        prompt_ids=pad_sequences([p.prompt for p in rows]).to(device),
        prompt_lengths=plen.to(device),
        response_lengths=rlen,
        generation_logprobs=glp,
        truncated=trunc,
        rewards=total.to(device),
        reward_components={k: v.to(device) for k, v in comps.items()},
        correct=correct.to(device),
    )
