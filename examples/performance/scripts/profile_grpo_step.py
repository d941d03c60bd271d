"""GRPO steps of the lab, with one named profiler/NVTX range per phase (for torch.profiler and nsys).

The profiling notebook imports :func:`grpo_step` from here. Run as a script to profile the lab with
Nsight Systems on a GPU; ``--profile-steps start:stop`` (same meaning as NeMo RL's
``NRL_NSYS_PROFILE_STEP_RANGE``) opens the CUDA profiler API only for those steps:

    nsys profile --trace=cuda,nvtx,osrt --capture-range=cudaProfilerApi --capture-range-end=stop \
        -o grpo_lab python scripts/profile_grpo_step.py --steps 6 --profile-steps 3:5

On a CPU-only machine the script runs the same steps and prints the phase timings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from rlref.advantages import grpo_advantages
from rlref.lab import (
    FULL,
    SMALL,
    TinyCausalLM,
    make_reference,
    make_task,
    rollout,
    sequence_logprobs,
    train_step,
)
from rlref.losses import ClippedPGLoss
from rlref.profiling import PHASES, nsys_step_range, phase


@dataclass
class StepState:
    """Everything one GRPO step needs: policy, frozen reference, optimizer, loss, task and generators."""

    policy: torch.nn.Module
    reference: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: ClippedPGLoss
    task: object
    num_prompts: int
    num_generations: int
    prompt_gen: torch.Generator
    sample_gen: torch.Generator


def make_state(scale=SMALL, seed: int = 0, device: str | torch.device = "cpu", lr: float = 3e-3) -> StepState:
    """A fresh policy (``scale.policy``), its reference copy and AdamW, on the ``copy`` task (2 digits)."""
    policy = TinyCausalLM(scale.policy, seed=seed).to(device)
    return StepState(
        policy=policy, reference=make_reference(policy),
        optimizer=torch.optim.AdamW(policy.parameters(), lr=lr), loss_fn=ClippedPGLoss(),
        task=make_task("copy", 2, ("reward/correct", "reward/partial"), extra_tokens=1),
        num_prompts=scale.num_prompts_per_step, num_generations=scale.num_generations_per_prompt,
        prompt_gen=torch.Generator().manual_seed(seed), sample_gen=torch.Generator().manual_seed(seed + 1),
    )


def grpo_step(s: StepState, timings: dict | None = None) -> dict:
    """One GRPO step in NeMo RL's order, each phase inside :func:`rlref.profiling.phase`."""
    with phase("generation", timings):
        problems = s.task.sample_prompts(s.num_prompts, s.prompt_gen)
        batch = rollout(s.policy, problems, s.num_generations, 1.0, s.sample_gen)
    with phase("policy_and_reference_logprobs", timings):
        prev = sequence_logprobs(s.policy, batch.input_ids)
        ref = sequence_logprobs(s.reference, batch.input_ids)
    with phase("advantage_calculation", timings):
        mask = batch.token_mask * batch.sample_mask[:, None]
        adv = grpo_advantages(batch.prompt_ids, batch.rewards, mask)
    with phase("policy_training", timings):
        data = batch.data()
        data.update(advantages=adv, prev_logprobs=prev, reference_policy_logprobs=ref)
        metrics = train_step(s.policy, s.optimizer, s.loss_fn, batch.input_ids, data, max_grad_norm=1.0)
    metrics["reward"] = float(batch.rewards.float().mean())
    metrics["num_tokens"] = float(batch.token_mask.sum())
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--profile-steps", default=None, help="start:stop (1-based, stop exclusive)")
    ap.add_argument("--scale", choices=["small", "full"], default="small")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = nsys_step_range(args.profile_steps) if args.profile_steps else range(0)
    s = make_state(SMALL if args.scale == "small" else FULL, device=device)
    for step in range(1, args.steps + 1):
        if device == "cuda" and step == (steps.start if steps else -1):
            torch.cuda.profiler.start()
        timings: dict[str, float] = {}
        m = grpo_step(s, timings)
        if device == "cuda" and steps and step == steps.stop - 1:
            torch.cuda.profiler.stop()
        total = sum(timings.values())
        shares = "  ".join(f"{k} {timings[k] / total:5.1%}" for k in PHASES)
        print(f"step {step}: {total * 1e3:7.1f} ms  reward {m['reward']:.3f}  {shares}")


if __name__ == "__main__":
    main()
