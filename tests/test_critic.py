"""rlref.critic: the value model, critic training, advantage weights, gradient variance, entropy change."""

from __future__ import annotations

import pytest
import torch

from rlref.advantages import gae_advantages
from rlref.critic import (
    ValueModel,
    advantage_weights,
    bootstrap_variance_ratio,
    gradient_samples,
    policy_gradient,
    softmax_entropy_change,
    squared_mean_difference,
    total_variance,
    train_critic,
)
from rlref.lab.policy import PolicyConfig, TinyCausalLM
from rlref.lab.rollout import rollout
from rlref.lab.tasks import VOCAB_SIZE, make_task

CFG = PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)


@pytest.fixture(scope="module")
def setting():
    task = make_task("copy", difficulty=2)
    policy = TinyCausalLM(CFG, seed=0)
    g = torch.Generator().manual_seed(0)
    batch = rollout(policy, task.sample_prompts(6, g), 4, 1.0, g)
    return task, policy, batch


def test_value_model_layout_is_shifted_by_one_and_causal():
    critic = ValueModel(CFG, seed=1)
    torch.nn.init.normal_(critic.head.weight)
    ids = torch.tensor([[1, 16, 5, 6, 3, 7, 8]])
    v = critic(ids)
    assert v.shape == ids.shape and v[0, 0] == 0
    changed = ids.clone()
    changed[0, 5] = 9  # token 5 only affects the values of the states after it (columns >= 6)
    v2 = critic(changed)
    assert torch.equal(v[:, :6], v2[:, :6]) and not torch.equal(v[:, 6:], v2[:, 6:])


def test_untrained_critic_predicts_zero_and_rejects_bad_input():
    critic = ValueModel(CFG)
    assert torch.equal(critic(torch.tensor([[1, 2, 3]])), torch.zeros(1, 3))
    with pytest.raises(TypeError, match="integer"):
        critic(torch.zeros(1, 3))


def test_advantage_weights_of_each_method(setting):
    _, _, batch = setting
    mask = batch.token_mask * batch.sample_mask[:, None]
    none = advantage_weights(batch, "none")
    assert torch.equal(none, batch.rewards.double()[:, None] * mask.double())
    group = advantage_weights(batch, "group")
    r = batch.rewards.double().view(-1, 4)
    loo = r - (r.sum(1, keepdim=True) - r) / 3
    assert torch.allclose(group.max(1).values.view(-1, 4) + group.min(1).values.view(-1, 4), loo)
    assert torch.equal(advantage_weights(batch, "group", reward_offset=-1.0), group)  # shift-invariant
    g = torch.Generator().manual_seed(3)
    values = torch.rand(batch.input_ids.shape, dtype=torch.float64, generator=g)
    gae = advantage_weights(batch, "gae", values, gae_lambda=0.5)
    expected, _ = gae_advantages(batch.rewards.double(), mask.double(), values, 0.5, 1.0, False)
    assert torch.equal(gae, expected * mask)


def test_advantage_weights_errors(setting):
    _, _, batch = setting
    with pytest.raises(ValueError, match="method must be one of"):
        advantage_weights(batch, "ppo")
    with pytest.raises(ValueError, match="needs values"):
        advantage_weights(batch, "gae")
    with pytest.raises(TypeError, match="batch must be a rlref.lab RolloutBatch"):
        advantage_weights({}, "none")
    with pytest.raises(TypeError, match="reward_offset must be a number"):
        advantage_weights(batch, "none", reward_offset="1")


def test_policy_gradient_matches_autograd_of_the_weighted_logprob_sum(setting):
    _, policy, batch = setting
    w = advantage_weights(batch, "none") - 0.3 * batch.token_mask.double()
    (g,) = policy_gradient(policy, batch.input_ids, [w])
    policy.zero_grad()
    logits = policy(batch.input_ids)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    ((w[:, 1:].float() * logp).sum() / len(batch)).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
    assert torch.allclose(g, ref, atol=1e-6)
    with pytest.raises(ValueError, match="weights\\[0\\] must be a tensor of shape"):
        policy_gradient(policy, batch.input_ids, [w[:, :2]])


def test_gradient_samples_shapes_and_group_equals_none_when_every_group_is_uniform(setting):
    task, policy, _ = setting
    critic = ValueModel(CFG)
    methods = {"none": {"method": "none"}, "gae": {"method": "gae", "gae_lambda": 1.0}}
    s = gradient_samples(policy, task, methods, critic, repeats=2, num_prompts=2, num_generations=2,
                         generator=torch.Generator().manual_seed(0))
    n = sum(p.numel() for p in policy.parameters())
    assert s["none"].shape == (2, n)
    assert torch.allclose(s["none"], s["gae"])  # a zero critic at lambda = 1 is no baseline
    with pytest.raises(ValueError, match="uses 'gae' but no critic"):
        gradient_samples(policy, task, methods, None, repeats=2)
    with pytest.raises(ValueError, match="must be a dict with 'method'"):
        gradient_samples(policy, task, {"x": ("none", 1.0)}, critic, repeats=2)


def test_train_critic_lowers_its_loss_towards_the_return_variance(setting):
    _, policy, _ = setting
    task = make_task("copy", difficulty=2, reward_components=("reward/brevity",), extra_tokens=2)
    critic = ValueModel(CFG, seed=2)
    g = torch.Generator().manual_seed(1)
    losses = train_critic(critic, policy, task, steps=30, num_prompts=8, num_generations=2, lr=1e-2,
                          generator=g)
    assert len(losses) == 30
    batch = rollout(policy, task.sample_prompts(32, g), 2, 1.0, g)  # held out
    mask = batch.token_mask.bool()
    returns = batch.rewards[:, None].expand(mask.shape)[mask]
    with torch.no_grad():
        fitted = ((critic(batch.input_ids)[mask] - returns) ** 2).mean()
    assert fitted < 0.9 * (returns**2).mean()  # better than the untrained (zero) critic
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        train_critic(critic, policy, task, steps=0)


def test_variance_helpers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 3, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(400, 3, generator=g, dtype=torch.float64) + 1.0
    assert total_variance(a) == pytest.approx(a.var(0).sum().item())
    est, lo, hi = bootstrap_variance_ratio(a, b)
    assert lo < est < hi and lo < 0.25 < hi
    assert squared_mean_difference(a, b) == pytest.approx(3.0, rel=0.3)  # ||E a - E b||^2 = 3
    assert abs(squared_mean_difference(a, a + 0.0)) < 1e-12
    with pytest.raises(ValueError, match="repeats >= 2"):
        total_variance(a[:1])


def test_softmax_entropy_change_covariance_formula():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        z = 2 * torch.randn(7, generator=g, dtype=torch.float64)
        a = torch.randn(7, generator=g, dtype=torch.float64)
        autograd, formula = softmax_entropy_change(z, a)
        assert autograd == pytest.approx(formula, rel=1e-9, abs=1e-12)
    # rewarding the most likely action lowers the entropy; rewarding a rare one raises it
    z = torch.tensor([3.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert softmax_entropy_change(z, torch.tensor([1.0, 0, 0, 0]))[0] < 0
    assert softmax_entropy_change(z, torch.tensor([0.0, 1, 0, 0]))[0] > 0
    with pytest.raises(ValueError, match="advantages must be a tensor of shape"):
        softmax_entropy_change(z, torch.zeros(3))
