"""Data-parallel GRPO training on a fixed batch with DDP and FSDP2, to compare with one process.

Launch (from examples/performance):

    python -m torch.distributed.run --standalone --nproc-per-node 2 scripts/dp_equivalence.py \
        --batch batch.pt --out results/

``batch.pt`` (written by the distributed-training notebook) holds ``input_ids`` [B, S] and the loss
``data`` dict of a GRPO step (masks, advantages, prev / generation / reference log-probs). Rank ``r``
trains on rows ``[r B/p, (r+1) B/p)``. Three runs, each from the same seeded TinyCausalLM:

- ``ddp_global``: DDP; each rank divides by the *global* valid-token count and multiplies the loss
  by ``p`` (what NeMo RL does), ``--steps`` AdamW steps;
- ``ddp_local``: DDP; each rank divides by its *own* token count (the naive way), one backward;
- ``fsdp2``: ``fully_shard`` on every transformer block, then on the root; global normalisation,
  ``--steps`` AdamW steps.

Every collective is counted (bytes of the tensors handed to it). Then each collective is timed
alone on buffers of several sizes. Rank 0 writes ``results.pt`` (first-step gradients and final
parameters of each run, as full tensors) and ``results.json`` (token counts, bytes, timings).
Backend: NCCL when every rank has a GPU of its own (``--backend auto``), gloo on the CPU otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from rlref.distributed import (
    CommCounter,
    ddp_counting_hook,
    fsdp2_collective_bytes,
    global_valid_counts,
    optimizer_state_bytes,
)
from rlref.lab import SMALL, TinyCausalLM
from rlref.losses import ClippedPGLoss, next_token_logprobs


def shard_rows(batch: dict, rank: int, world: int) -> tuple[torch.Tensor, dict]:
    """This rank's contiguous block of rows of ``input_ids`` and of every [B, ...] tensor in ``data``."""
    ids = batch["input_ids"]
    B = ids.shape[0]
    if B % world:
        raise ValueError(f"batch of {B} rows does not split over {world} ranks")
    rows = slice(rank * B // world, (rank + 1) * B // world)
    data = {k: v[rows] for k, v in batch["data"].items()}
    return ids[rows], data


def rank_loss(model, loss_fn, ids, data, world: int, normalization: str):
    """This rank's loss. ``global``: divide by the all-reduced counts, times ``world`` (DDP and FSDP
    average gradients over ranks, so the average becomes the global token mean). ``local``: divide by
    this rank's own counts (the average is then a mean of per-rank means)."""
    if normalization == "global":
        gs, gt = global_valid_counts(data["token_mask"], data["sample_mask"])
        scale = world
    else:
        sm = data["sample_mask"].float()
        gs, gt = sm.sum(), (data["token_mask"][:, 1:].float() * sm[:, None]).sum()
        scale = 1
    curr = next_token_logprobs(model(ids).float(), ids)
    loss, _ = loss_fn(next_token_logprobs=curr, data=data, global_valid_seqs=gs, global_valid_toks=gt)
    return loss * scale


def full(t: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of a plain tensor or of a DTensor (all-gathers the shards)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu().clone()


def train(model, loss_fn, ids, data, world, steps, lr, max_grad_norm, normalization, counter):
    """``steps`` AdamW steps on this rank's rows; returns (first-step grads, per-step bytes)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    first_grads = None
    per_step = []
    for step in range(steps):
        counter.clear()
        opt.zero_grad(set_to_none=True)
        loss = rank_loss(model, loss_fn, ids, data, world, normalization)
        loss.backward()
        if step == 0:
            first_grads = {n: full(p.grad) for n, p in model.named_parameters()}
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        per_step.append({op: counter.total(op) for op in ("all_reduce", "all_gather", "reduce_scatter")}
                        | {f"{op}_calls": counter.count(op)
                           for op in ("all_reduce", "all_gather", "reduce_scatter")})
    return first_grads, per_step, opt


def time_collectives(sizes, repeats, device):
    """Median seconds (the slowest rank's) of each collective on float32 buffers of ``sizes`` bytes."""
    world = dist.get_world_size()
    ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    out = {"all_reduce": [], "all_gather": [], "reduce_scatter": []}
    for nbytes in sizes:
        n = nbytes // 4
        full_buf = torch.ones(n, device=device)
        shard = torch.ones(n // world, device=device)
        ops = {
            "all_reduce": lambda f=full_buf: dist.all_reduce(f),
            "all_gather": lambda f=full_buf, s=shard: ag(f, s),
            "reduce_scatter": lambda f=full_buf, s=shard: rs(s, f),
        }
        for name, fn in ops.items():
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                dist.barrier()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            t = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            out[name].append(float(t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", required=True, help="batch.pt written by the notebook")
    ap.add_argument("--out", required=True, help="directory for results.pt and results.json")
    ap.add_argument("--steps", type=int, default=3, help="AdamW steps per run")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="TinyCausalLM init seed")
    ap.add_argument("--sizes", default="65536,262144,1048576,4194304,16777216",
                    help="comma-separated buffer sizes in bytes for the collective timings")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"])
    args = ap.parse_args()

    # NCCL needs one GPU per rank; with fewer GPUs than ranks, fall back to gloo on the CPU.
    enough_gpus = torch.cuda.device_count() >= int(os.environ.get("WORLD_SIZE", "1"))
    if args.backend == "nccl" and not enough_gpus:
        raise SystemExit("--backend nccl needs one GPU per rank")
    use_cuda = enough_gpus and args.backend in ("auto", "nccl")
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    batch = torch.load(args.batch, weights_only=True)
    ids, data = shard_rows(batch, rank, world)
    ids, data = ids.to(device), {k: v.to(device) for k, v in data.items()}
    loss_fn = ClippedPGLoss()
    local_toks = float((data["token_mask"][:, 1:] * data["sample_mask"][:, None]).sum())
    counts = torch.zeros(world, device=device)
    counts[rank] = local_toks
    dist.all_reduce(counts)
    n_gpus = torch.cuda.device_count()
    if use_cuda:
        label = f"NCCL on {world} GPUs ({torch.cuda.get_device_name(device)})"
    elif n_gpus:
        # One GPU cannot host two NCCL ranks: what follows is gloo on the CPU even on a GPU machine.
        label = f"gloo on the CPU ({n_gpus} GPU(s) visible, fewer than the {world} ranks NCCL needs)"
    else:
        label = "gloo on the CPU (no GPU)"
    result = {"backend": backend, "world_size": world, "tokens_per_rank": counts.tolist(),
              "torch": torch.__version__, "device": str(device), "gpus_visible": n_gpus,
              "backend_label": label}
    tensors = {}
    counter = CommCounter()

    def new_model():
        return TinyCausalLM(SMALL.policy, seed=args.seed).to(device)

    # DDP, global normalisation (NeMo RL's way): counts come from an all-reduce outside the counter.
    ddp = DDP(new_model())
    ddp.register_comm_hook(None, ddp_counting_hook(counter))
    grads, per_step, opt = train(ddp, loss_fn, ids, data, world, args.steps, args.lr, args.max_grad_norm,
                                 "global", counter)
    tensors["ddp_global/grads"] = {n.removeprefix("module."): g for n, g in grads.items()}
    tensors["ddp_global/params"] = {n.removeprefix("module."): full(p) for n, p in ddp.named_parameters()}
    result["ddp"] = {"per_step_bytes": per_step, "optimizer_state_bytes": optimizer_state_bytes(opt),
                     "param_bytes": sum(p.numel() * p.element_size() for p in ddp.parameters())}

    # DDP, local normalisation: one backward only.
    ddp_local = DDP(new_model())
    ddp_local.register_comm_hook(None, ddp_counting_hook(counter))
    grads, _, _ = train(ddp_local, loss_fn, ids, data, world, 1, args.lr, args.max_grad_norm, "local",
                        counter)
    tensors["ddp_local/grads"] = {n.removeprefix("module."): g for n, g in grads.items()}

    # FSDP2: shard every block, then the root (which keeps the embeddings and the final norm).
    model = new_model()
    mesh = init_device_mesh(device.type, (world,))
    groups = []
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
        groups.append(([tuple(p.shape) for p in block.parameters()], True))
    fully_shard(model, mesh=mesh)
    block_params = {id(p) for b in model.blocks for p in b.parameters()}
    groups.append(([tuple(p.shape) for p in model.parameters() if id(p) not in block_params], False))
    with counter:
        grads, per_step, opt = train(model, loss_fn, ids, data, world, args.steps, args.lr,
                                     args.max_grad_norm, "global", counter)
    tensors["fsdp2/grads"] = grads
    tensors["fsdp2/params"] = {n: full(p) for n, p in model.named_parameters()}
    local_param_bytes = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    result["fsdp2"] = {"per_step_bytes": per_step, "optimizer_state_bytes": optimizer_state_bytes(opt),
                       "param_bytes_local": local_param_bytes,
                       "expected_bytes": fsdp2_collective_bytes(groups, world, element_size=4)}

    # Each collective alone, on buffers of several sizes.
    sizes = [int(s) for s in args.sizes.split(",")]
    result["collectives"] = {"sizes": sizes, "seconds": time_collectives(sizes, args.repeats, device)}

    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, out / "results.pt")
        (out / "results.json").write_text(json.dumps(result, indent=1))
        print(f"rank 0 wrote {out / 'results.pt'} and results.json ({backend}, world size {world})")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
