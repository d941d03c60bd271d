"""Tests for rlref.distributed: volume formulas, FSDP2 shard sizes, global counts, byte counters, torchrun."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from rlref import distributed as D

# ------------------------------------------------------------------ formulas


@pytest.mark.parametrize(("p", "ar", "ag"), [(1, 0.0, 0.0), (2, 1.0, 0.5), (4, 1.5, 0.75), (8, 1.75, 0.875)])
def test_wire_factor_hand_values(p, ar, ag):
    assert D.wire_factor("all_reduce", p) == pytest.approx(ar)
    assert D.wire_factor("all_gather", p) == pytest.approx(ag)
    assert D.wire_factor("reduce_scatter", p) == pytest.approx(ag)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4096), st.floats(0, 1e12))
def test_ring_all_reduce_is_reduce_scatter_plus_all_gather(p, n):
    ar = D.wire_bytes("all_reduce", n, p)
    assert ar == pytest.approx(D.wire_bytes("reduce_scatter", n, p) + D.wire_bytes("all_gather", n, p))
    assert ar <= 2 * n  # never more than twice the buffer, however many ranks


def test_bus_bandwidth_is_wire_bytes_per_second_and_equal_for_equal_link_speed():
    n, p = 8e6, 4
    link = 2e9  # bytes/s
    times = {op: D.wire_bytes(op, n, p) / link for op in D.COLLECTIVES}
    for op, t in times.items():
        assert D.bus_bandwidth(op, n, t, p) == pytest.approx(link)
    assert times["all_reduce"] == pytest.approx(2 * times["all_gather"])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_world_size_raises(bad):
    with pytest.raises(ValueError, match="world_size"):
        D.wire_factor("all_reduce", bad)


def test_bad_collective_bytes_and_seconds_raise():
    with pytest.raises(ValueError, match="collective"):
        D.wire_bytes("broadcast", 10, 2)
    with pytest.raises(ValueError, match="nbytes"):
        D.wire_bytes("all_reduce", -1, 2)
    with pytest.raises(ValueError, match="nbytes"):
        D.wire_bytes("all_reduce", math.nan, 2)
    with pytest.raises(ValueError, match="seconds"):
        D.bus_bandwidth("all_reduce", 10, 0.0, 2)


@pytest.mark.parametrize(("shape", "p", "expected"), [((4, 3), 2, 6), ((5, 3), 2, 9), ((7,), 4, 2),
                                                      ((), 2, 1), ((1, 10), 8, 10), ((0, 3), 2, 0)])
def test_dim0_shard_numel_pads_dim0_to_a_multiple_of_p(shape, p, expected):
    assert D.dim0_shard_numel(shape, p) == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=3), st.integers(1, 16))
def test_padded_shards_cover_the_parameter_with_less_than_one_row_per_rank_of_padding(shape, p):
    numel = math.prod(shape)
    rest = math.prod(shape[1:])
    total = p * D.dim0_shard_numel(shape, p)
    assert numel <= total < numel + p * max(rest, 1)


def test_dim0_shard_numel_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        D.dim0_shard_numel((3, -1), 2)


def test_fsdp2_collective_bytes_counts_two_gathers_for_resharded_groups_and_one_for_the_root():
    blocks = ([(5, 3), (5,)], True)  # padded to 6x3 + 6 = 24 elements at p=2
    root = ([(4, 2)], False)         # 8 elements
    out = D.fsdp2_collective_bytes([blocks, root], 2, element_size=4)
    assert out == {"all_gather": (2 * 24 + 8) * 4, "reduce_scatter": (24 + 8) * 4}
    mixed = D.fsdp2_collective_bytes([blocks, root], 2, element_size=2, grad_element_size=4)
    assert mixed == {"all_gather": (2 * 24 + 8) * 2, "reduce_scatter": (24 + 8) * 4}
    with pytest.raises(ValueError, match="grad_element_size"):
        D.fsdp2_collective_bytes([blocks], 2, grad_element_size=0)


# ------------------------------------------------------------------ global counts


def test_global_valid_counts_without_a_process_group_are_the_local_counts():
    tm = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.float32)
    sm = torch.tensor([1.0, 1.0, 0.0])
    gs, gt = D.global_valid_counts(tm, sm)
    # column 0 is ignored (shift by one) and the third row is masked out
    assert float(gs) == 2.0 and float(gt) == 2.0 + 2.0


def test_global_valid_counts_rejects_mismatched_masks():
    with pytest.raises(ValueError, match="sample_mask"):
        D.global_valid_counts(torch.ones(3, 4), torch.ones(2))
    with pytest.raises(ValueError, match="token_mask"):
        D.global_valid_counts(torch.ones(4), torch.ones(4))


def test_global_normalization_times_world_size_averages_to_the_full_batch_gradient():
    """The identity behind NeMo RL's DP loss scaling, checked without processes: per-rank losses
    sum_r / N_global * p, averaged over ranks, have the full-batch token mean's gradient; the
    per-rank-mean losses do not when ranks hold different token counts."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, requires_grad=True, generator=g)
    x = torch.randn(10, 3, generator=g)
    ranks = [slice(0, 2), slice(2, 10)]  # 2 and 8 tokens
    full = (x @ w).pow(2).mean()
    (g_full,) = torch.autograd.grad(full, w)
    p = len(ranks)
    glob = sum((x[r] @ w).pow(2).sum() / 10 * p for r in ranks) / p
    (g_glob,) = torch.autograd.grad(glob, w)
    local = sum((x[r] @ w).pow(2).mean() for r in ranks) / p
    (g_local,) = torch.autograd.grad(local, w)
    assert torch.allclose(g_glob, g_full, atol=1e-6)
    assert not torch.allclose(g_local, g_full, atol=1e-3)


# ------------------------------------------------------------------ counters (one-process gloo group)


@pytest.fixture
def gloo_world_of_one():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{D.free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:.*is deprecated:FutureWarning")  # torch >= 2.13 renamed the two
def test_comm_counter_records_bytes_of_each_collective_and_restores_torch(gloo_world_of_one):
    names = ("all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor")
    originals = {n: getattr(dist, n) for n in names}
    with D.CommCounter() as c:
        dist.all_reduce(torch.ones(10))
        dist.all_gather_into_tensor(torch.empty(6), torch.ones(6))  # deprecated name calls its successor
        dist.reduce_scatter_tensor(torch.empty(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64))
    assert [(r.op, r.nbytes) for r in c.records] == [("all_reduce", 40), ("all_gather", 24),
                                                    ("reduce_scatter", 40)]
    assert c.count("all_gather") == 1  # not counted twice
    assert all(r.seconds is not None and r.seconds >= 0 for r in c.records)
    assert {n: getattr(dist, n) for n in originals} == originals


def test_comm_counter_cannot_be_entered_twice():
    c = D.CommCounter()
    with c, pytest.raises(RuntimeError, match="already active"):
        c.__enter__()


def test_ddp_counting_hook_sees_every_gradient_byte(gloo_world_of_one):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    counter = D.CommCounter()
    ddp.register_comm_hook(None, D.ddp_counting_hook(counter))
    ddp(torch.randn(5, 4)).sum().backward()
    n_params = sum(p.numel() for p in model.parameters())
    assert counter.total("all_reduce") == 4 * n_params


def test_ddp_counting_hook_needs_a_counter():
    with pytest.raises(TypeError, match="CommCounter"):
        D.ddp_counting_hook(None)


def test_optimizer_state_bytes_counts_adam_moments():
    p = torch.nn.Parameter(torch.ones(7))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones(7)
    opt.step()
    assert D.optimizer_state_bytes(opt) == 2 * 7 * 4  # exp_avg and exp_avg_sq; the 0-d step is skipped


def test_tensor_bytes_rejects_non_tensors():
    with pytest.raises(TypeError, match="torch.Tensor"):
        D.tensor_bytes([1, 2])


# ------------------------------------------------------------------ torchrun


def test_launch_torchrun_runs_two_ranks_and_reports_failures(tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text(textwrap.dedent("""
        import torch, torch.distributed as dist
        dist.init_process_group("gloo")
        t = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(t)
        print(f"rank {dist.get_rank()} sum {t.item():.0f}")
        dist.destroy_process_group()
    """))
    proc = D.launch_torchrun(ok, nproc_per_node=2, timeout=240)
    assert "rank 0 sum 3" in proc.stdout and "rank 1 sum 3" in proc.stdout
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('boom from the script')\n")
    with pytest.raises(RuntimeError, match="boom from the script"):
        D.launch_torchrun(bad, nproc_per_node=1, timeout=240)


def test_launch_torchrun_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        D.launch_torchrun(tmp_path / "missing.py")
    script = tmp_path / "s.py"
    script.write_text("")
    with pytest.raises(ValueError, match="nproc_per_node"):
        D.launch_torchrun(script, nproc_per_node=0)


def test_comm_timing_synchronises_cuda_tensors_only(monkeypatch):
    """Review G6: a CUDA collective returns once enqueued, so the timer must synchronise around it."""
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))

    class FakeCuda(torch.Tensor):
        @property
        def is_cuda(self):
            return True

    cpu = torch.zeros(2)
    D._sync_if_cuda(cpu, False)
    assert calls == []
    fake = torch.zeros(2).as_subclass(FakeCuda)
    D._sync_if_cuda(fake, True)      # asynchronous: not timed, not synchronised
    assert calls == []
    D._sync_if_cuda(fake, False)
    assert len(calls) == 1
