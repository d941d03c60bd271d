"""TinyCausalLM: seeded construction, shapes, causality, reference copies, input validation."""

import pytest
import torch

from rlref.lab import VOCAB_SIZE, PolicyConfig, TinyCausalLM, count_parameters, make_reference

CFG = PolicyConfig(VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)


def test_same_seed_gives_identical_weights_whatever_the_global_rng():
    torch.manual_seed(123)
    a = TinyCausalLM(CFG, seed=7)
    torch.manual_seed(999)
    b = TinyCausalLM(CFG, seed=7)
    c = TinyCausalLM(CFG, seed=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_forward_shape_dtype_and_near_uniform_start():
    model = TinyCausalLM(CFG, seed=0)
    ids = torch.randint(0, VOCAB_SIZE, (3, 10), generator=torch.Generator().manual_seed(0))
    logits = model(ids)
    assert logits.shape == (3, 10, VOCAB_SIZE) and logits.dtype == torch.float32
    # init_std 0.02 makes the untrained next-token distribution close to uniform.
    probs = logits.detach().softmax(-1)
    assert float((probs - 1 / VOCAB_SIZE).abs().max()) < 0.05


def test_later_tokens_do_not_change_earlier_logits():
    model = TinyCausalLM(CFG, seed=0)
    ids = torch.randint(0, VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 3) % VOCAB_SIZE
    a, b = model(ids), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_parameter_count_matches_the_architecture():
    d, f, v, s, n = CFG.d_model, CFG.ff_dim, CFG.vocab_size, CFG.max_seq_len, CFG.n_layers
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    assert count_parameters(TinyCausalLM(CFG)) == v * d + s * d + n * per_block + 2 * d


def test_reference_is_a_frozen_equal_copy():
    model = TinyCausalLM(CFG, seed=0)
    ref = make_reference(model)
    assert ref is not model and not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    ids = torch.randint(0, VOCAB_SIZE, (2, 5), generator=torch.Generator().manual_seed(2))
    assert torch.equal(ref(ids), model(ids))
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert not torch.equal(ref(ids), model(ids))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": 20, "d_model": 30, "n_heads": 4}, "divisible"),
        ({"vocab_size": 20, "n_layers": 1.5}, "n_layers"),
        ({"vocab_size": 20, "init_std": -1.0}, "init_std"),
        ({"vocab_size": 20, "d_ff": 0}, "d_ff"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PolicyConfig(**kwargs)


def test_bad_inputs_raise():
    model = TinyCausalLM(CFG, seed=0)
    with pytest.raises(TypeError, match="PolicyConfig"):
        TinyCausalLM({"vocab_size": 20})
    with pytest.raises(ValueError, match="seed"):
        TinyCausalLM(CFG, seed=-1)
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"\[B, S\]"):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab"):
        model(torch.full((1, 3), VOCAB_SIZE))
    with pytest.raises(TypeError, match="Module"):
        make_reference("policy")
