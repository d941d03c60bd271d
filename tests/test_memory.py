"""rlref.memory: the memory model against measured saved-tensor and live-tensor bytes; packing, batching."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlref import memory as M
from rlref.lab import FULL, SMALL, VOCAB_SIZE, PolicyConfig, TinyCausalLM, count_parameters
from rlref.losses import next_token_logprobs


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


CFG = PolicyConfig(VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)


def _ids(B, S, seed=0):
    return torch.randint(0, VOCAB_SIZE, (B, S), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cfg", [SMALL.policy, FULL.policy, PolicyConfig(VOCAB_SIZE, d_model=24, n_layers=3,
                                                                         n_heads=3, d_ff=40, max_seq_len=16)])
def test_parameter_count_matches_the_model(cfg):
    assert M.parameter_count(cfg) == count_parameters(TinyCausalLM(cfg))


@pytest.mark.parametrize("B,S", [(1, 2), (2, 7), (3, 24), (2, 64)])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_model_equals_measured_saved_bytes(B, S, checkpointing):
    model = TinyCausalLM(CFG, seed=0)
    ids = _ids(B, S)
    with M.SavedTensorMeter(list(model.parameters()) + list(model.buffers())) as meter:
        logits = M.forward_tokens(model, ids, checkpointing=checkpointing)
        next_token_logprobs(logits.float(), ids).mean()
    assert meter.bytes == M.activation_bytes(CFG, B, S, checkpointing=checkpointing)


def test_activation_inventory_has_the_quadratic_attention_term():
    model = TinyCausalLM(CFG, seed=0)
    B, S, H = 2, 24, CFG.n_heads
    with M.SavedTensorMeter(list(model.parameters()) + list(model.buffers())) as meter:
        model(_ids(B, S)).sum()
    assert meter.inventory[((B, H, S, S), "float32")] == CFG.n_layers  # softmax probabilities, one per layer


def test_checkpointing_saves_less_and_gives_the_same_gradients():
    model = TinyCausalLM(CFG, seed=0)
    ids = _ids(3, 40)
    grads = []
    for ck in (False, True):
        model.zero_grad(set_to_none=True)
        next_token_logprobs(M.forward_tokens(model, ids, checkpointing=ck), ids).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert M.activation_bytes(CFG, 3, 40, checkpointing=True) < M.activation_bytes(CFG, 3, 40) / 5


def test_estimate_memory_static_parts_match_adamw_state():
    model = TinyCausalLM(CFG, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = _ids(2, 8)
    next_token_logprobs(model(ids), ids).mean().backward()
    opt.step()
    est = M.estimate_memory(CFG, 2, 8)
    params = list(model.parameters())
    assert est.parameters == M.tensor_bytes(params)
    assert est.gradients == M.tensor_bytes(p.grad for p in params)
    # AdamW keeps exp_avg and exp_avg_sq (the model's 2 states) plus a 4-byte `step` per parameter tensor
    assert M.optimizer_state_bytes(opt) == est.optimizer_states + 4 * len(params)
    assert est.total == est.static + est.activations
    assert set(est.as_dict()) == {"parameters", "gradients", "optimizer_states", "activations"}


def test_live_meter_counts_allocations_and_frees():
    with M.LiveTensorMeter() as meter:
        x = torch.zeros(1000)
        y = x + 1
        assert meter.live == 8000
        del x  # freed here; the next op notices
        z = y * 2
        assert meter.live == 8000
        w = y + z
        assert meter.live == 12000
        del y, z, w
        torch.zeros(1)
    assert meter.peak == 12000 and meter.mark() == 0


def test_live_meter_after_forward_and_backward():
    model = TinyCausalLM(CFG, seed=0)
    params = list(model.parameters())
    ids = _ids(2, 32)
    with M.LiveTensorMeter(params + list(model.buffers())) as meter:
        loss = next_token_logprobs(model(ids), ids).mean()
        after_forward = meter.mark()
        loss.backward()
        del loss
        after_backward = meter.mark()
    act = M.activation_bytes(CFG, 2, 32)
    assert act <= after_forward <= act * 1.01  # saved tensors + the log-probs and the loss
    grads = M.tensor_bytes(p.grad for p in params)
    assert grads <= after_backward <= grads * 1.02
    assert meter.peak > after_forward


def test_forward_tokens_is_the_model_forward():
    model = TinyCausalLM(CFG, seed=0)
    ids = _ids(3, 17)
    assert torch.equal(M.forward_tokens(model, ids), model(ids))


def test_packed_rows_give_each_sequence_its_own_logits():
    model = TinyCausalLM(CFG, seed=0)
    g = torch.Generator().manual_seed(3)
    lengths = [5, 9, 3, 12, 7, 16, 1]
    seqs = [torch.randint(0, VOCAB_SIZE, (n,), generator=g).tolist() for n in lengths]
    packed = M.pack_sequences(seqs, capacity=16)
    assert sorted(i for b in packed.bins for i in b) == list(range(len(seqs)))
    logits = M.forward_tokens(model, packed.input_ids, packed.position_ids, packed.segment_ids)
    assert torch.isfinite(logits).all()
    for i, s in enumerate(seqs):
        alone = model(torch.tensor([s]))[0]
        torch.testing.assert_close(packed.unpack(logits, i), alone, rtol=1e-5, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(50, 120))
def test_first_fit_decreasing_fits_every_sequence_once_within_the_ffd_bound(lengths, capacity):
    bins = M.first_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # first fit never leaves two bins that could be merged (when a bin was opened, its first sequence
    # did not fit in any earlier bin), so it uses fewer than 2 * ceil(total / capacity) + 1 bins
    loads = sorted(sum(lengths[i] for i in b) for b in bins)
    assert len(loads) < 2 or loads[0] + loads[1] > capacity
    assert len(bins) < 2 * math.ceil(sum(lengths) / capacity) + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=1, max_size=40), st.integers(64, 300),
       st.sampled_from([1, 4, 8]))
def test_dynamic_microbatches_respect_the_token_budget(lengths, budget, rnd):
    batches = M.dynamic_microbatches(lengths, budget, rnd)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        width = -(-max(lengths[i] for i in b) // rnd) * rnd
        assert len(b) * width <= budget


def test_dynamic_microbatches_hand_example():
    # sorted: 30 (alone, 2 x 32 > 32), then 12, 9 (2 x 12 = 24 <= 32), then 7, 5, 3, 2 at width 8
    assert M.dynamic_microbatches([5, 9, 3, 12, 7, 30, 2], 32, 4) == [[5], [3, 1], [4, 0, 2, 6]]


def test_pad_batch_and_padding_fraction():
    ids, mask = M.pad_batch([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert M.padding_fraction(4, [(2, 3)]) == pytest.approx(1 / 3)
    assert M.padding_fraction(4, [(1, 3), (1, 1)]) == 0.0


@pytest.mark.parametrize("call", [
    lambda: M.activation_bytes(CFG, 0, 4), lambda: M.activation_bytes(CFG, 2, 4, dtype_bytes=0),
    lambda: M.first_fit_decreasing([5, 20], 10), lambda: M.first_fit_decreasing([], 10),
    lambda: M.dynamic_microbatches([40], 32), lambda: M.dynamic_microbatches([3], 32, 0),
    lambda: M.pad_batch([[1, 2, 3]], width=2), lambda: M.padding_fraction(10, [(1, 3)]),
    lambda: M.padding_fraction(1, []), lambda: M.estimate_memory(CFG, 2, 4, optimizer_states=-1),
    lambda: M.forward_tokens(TinyCausalLM(CFG), torch.zeros(2, 3, dtype=torch.long),
                             position_ids=torch.zeros(2, 3, dtype=torch.long)),
    lambda: M.forward_tokens(TinyCausalLM(CFG), torch.zeros(2, 100, dtype=torch.long)),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError):
        M.parameter_count(object())
    with pytest.raises(TypeError):
        M.optimizer_state_bytes([])
    with pytest.raises(TypeError):
        M.tensor_bytes([1.0])


def test_cuda_peak_bytes_measures_on_a_gpu_and_refuses_without_one():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            M.cuda_peak_bytes(lambda: None)
        return

    def alloc():
        x = torch.empty(1 << 20, device="cuda")
        del x

    assert M.cuda_peak_bytes(alloc) >= 4 << 20


# -- KV cache ----------------------------------------------------------------------------------------
def test_kv_cache_bytes_per_token_of_public_configs():
    # Llama-3.1-8B: 32 layers, 8 KV heads of 128; Qwen2.5-1.5B: 28 layers, 2 KV heads of 128 (config.json)
    assert M.kv_cache_bytes_per_token(32, 8, 128, 2) == 128 * 1024
    assert M.kv_cache_bytes_per_token(28, 2, 128, 2) == 28 * 1024
    assert M.kv_cache_bytes_per_token(32, 8, 128, M.KV_CACHE_DTYPE_BYTES["fp8"]) == 64 * 1024
    # TP splits the KV heads, and replicates them once TP exceeds their number
    assert M.kv_cache_bytes_per_token(80, 8, 128, 2, tensor_parallel_size=8) == 2 * 80 * 1 * 128 * 2
    assert M.kv_cache_bytes_per_token(28, 2, 128, 2, tensor_parallel_size=4) == 2 * 28 * 1 * 128 * 2
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        M.kv_cache_bytes_per_token(28, 3, 128, 2, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="n_kv_heads"):
        M.kv_cache_bytes_per_token(28, 0, 128, 2)


def test_kv_cache_tokens_fills_the_utilization_share_after_the_weights():
    gib = 2**30
    per_token = M.kv_cache_bytes_per_token(32, 8, 128, 2)
    tokens = M.kv_cache_tokens(80 * gib, 0.6, 16 * gib, per_token)
    assert tokens == (48 * gib - 16 * gib) // per_token == 262144
    assert M.kv_cache_tokens(80 * gib, 0.6, 16 * gib, per_token, other_bytes=8 * gib) == 196608
    assert M.kv_cache_tokens(10 * gib, 0.5, 16 * gib, per_token) == 0  # the weights alone do not fit
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        M.kv_cache_tokens(gib, 1.5, 0, per_token)
    with pytest.raises(ValueError, match="weight_bytes"):
        M.kv_cache_tokens(gib, 0.5, -1, per_token)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_captured_kv_cache_has_the_formula_bytes_and_is_causal(dtype):
    cfg = PolicyConfig(64, d_model=32, n_layers=3, n_heads=4, max_seq_len=16)
    model = TinyCausalLM(cfg, seed=0).to(dtype)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    cache = M.capture_kv(model, ids)
    assert len(cache) == cfg.n_layers and cache[0][0].shape == (2, 4, 10, 8)
    measured = sum(t.numel() * t.element_size() for kv in cache for t in kv)
    per_token = M.kv_cache_bytes_per_token(cfg.n_layers, cfg.n_heads, cfg.d_model // cfg.n_heads,
                                           torch.finfo(dtype).bits // 8)
    assert measured == per_token * ids.numel()
    # a cache: the K and V of a prefix do not change when tokens are appended (up to the dtype's rounding
    # in a longer matmul; a dependence on later tokens would move them by O(1))
    longer = M.capture_kv(model, torch.cat([ids, ids[:, :3]], dim=1))
    for (k, v), (k2, v2) in zip(cache, longer, strict=True):
        torch.testing.assert_close(k, k2[:, :, :10])
        torch.testing.assert_close(v, v2[:, :, :10])


def test_capture_kv_rejects_a_model_without_attention_blocks():
    with pytest.raises(TypeError, match="TinyCausalLM"):
        M.capture_kv(torch.nn.Linear(2, 2), torch.zeros(1, 2))
