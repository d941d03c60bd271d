"""Rollouts: NeMo RL layout, masks, generation vs training log-probs (fp32 and bf16), sampling law."""

import pytest
import torch

from rlref.lab import (
    EOS_ID,
    PAD_ID,
    VOCAB_SIZE,
    PolicyConfig,
    RolloutBatch,
    TinyCausalLM,
    generate,
    make_generation_model,
    make_task,
    refit,
    rollout,
    sequence_logprobs,
)

CFG = PolicyConfig(VOCAB_SIZE, d_model=32, n_layers=2, n_heads=4, max_seq_len=24)


def _batch(seed=0, temperature=1.0, generation_model=None, task=None):
    model = TinyCausalLM(CFG, seed=0)
    task = task or make_task("copy", 3, extra_tokens=2)
    problems = task.sample_prompts(6, torch.Generator().manual_seed(seed))
    batch = rollout(model, problems, 4, temperature, torch.Generator().manual_seed(seed + 1),
                    generation_model=generation_model)
    return model, batch


def test_layout_shapes_and_masks():
    _, b = _batch()
    B, S = b.input_ids.shape
    assert B == 24 and S == 6 + 5
    assert b.token_mask.shape == b.generation_logprobs.shape == (B, S)
    assert b.sample_mask.tolist() == [1.0] * B
    for i in range(B):
        p, n = int(b.prompt_lengths[i]), int(b.response_lengths[i])
        row_mask = b.token_mask[i]
        assert row_mask[:p].sum() == 0 and row_mask[p : p + n].tolist() == [1.0] * n
        assert row_mask[p + n :].sum() == 0
        assert b.input_ids[i, :p].tolist() == list(b.problems[i].prompt)
        assert torch.all(b.input_ids[i, p + n :] == PAD_ID)
        response = b.input_ids[i, p : p + n].tolist()
        assert b.truncated[i] == (EOS_ID not in response)
        if EOS_ID in response:
            assert response.index(EOS_ID) == n - 1  # generation stops right after EOS
        assert torch.all(b.generation_logprobs[i][row_mask == 0] == 0)
        assert torch.all(b.generation_logprobs[i][row_mask == 1] < 0)
    # G responses per problem are contiguous and share the prompt (one GRPO group).
    assert all(b.problems[4 * g] is b.problems[4 * g + k] for g in range(6) for k in range(4))
    assert b.rewards.tolist() == b.reward_components["reward/correct"].tolist()
    assert b.data().keys() >= {"token_mask", "sample_mask", "generation_logprobs", "rewards"}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_generation_logprobs_equal_training_logprobs(temperature):
    model, b = _batch(temperature=temperature)
    prev = sequence_logprobs(model, b.input_ids, temperature)
    assert prev.shape == b.input_ids.shape and torch.all(prev[:, 0] == 0)
    diff = ((prev - b.generation_logprobs) * b.token_mask).abs().max()
    assert float(diff) < 1e-5


def test_bf16_generation_logprobs_differ_from_fp32_training_logprobs():
    model = TinyCausalLM(CFG, seed=0)
    gen = make_generation_model(model, torch.bfloat16)
    assert gen is not model and next(gen.parameters()).dtype == torch.bfloat16
    assert make_generation_model(model, torch.float32) is model
    _, b = _batch(generation_model=gen)
    prev = sequence_logprobs(model, b.input_ids)
    diff = ((prev - b.generation_logprobs) * b.token_mask).abs()
    assert 1e-4 < float(diff.max()) < 0.2  # visibly different, same distribution up to rounding
    # refit copies updated weights into the bf16 copy.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    refit(gen, model)
    for pg, pm in zip(gen.parameters(), model.parameters(), strict=True):
        assert torch.equal(pg, pm.to(torch.bfloat16))


def test_same_generator_seed_gives_the_same_rollout():
    _, a = _batch(seed=3)
    _, b = _batch(seed=3)
    _, c = _batch(seed=4)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.generation_logprobs, b.generation_logprobs)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_sampling_follows_softmax_of_logits_over_temperature():
    model = TinyCausalLM(PolicyConfig(VOCAB_SIZE, d_model=16, n_layers=1, n_heads=2, max_seq_len=8,
                                      init_std=0.5), seed=1)
    prompt = [1, 16, 5, 3]
    n, T = 6000, 0.8
    ids, *_ = generate(model, [prompt] * n, 1, T, torch.Generator().manual_seed(0))
    with torch.no_grad():
        last = model(torch.tensor([prompt]))[0, -1]
    probs = torch.softmax(last / T, -1)
    freq = torch.bincount(ids[:, 4], minlength=VOCAB_SIZE).float() / n
    # 5 standard errors of a binomial proportion on every token.
    assert torch.all((freq - probs).abs() <= 5 * (probs * (1 - probs) / n).sqrt() + 1e-3)
    greedy, _, lp, *_ = generate(model, [prompt], 1, 0.0)
    assert int(greedy[0, 4]) == int(probs.argmax())
    assert float(lp[0, 4]) == pytest.approx(float(torch.log_softmax(last, -1).max()), abs=1e-6)


def test_variable_prompt_lengths_and_budgets_in_one_batch():
    model = TinyCausalLM(CFG, seed=0)
    problems = (make_task("copy", 1).sample_prompts(2, torch.Generator().manual_seed(0))
                + make_task("add", 2).sample_prompts(2, torch.Generator().manual_seed(0)))
    b = rollout(model, problems, 2, 1.0, torch.Generator().manual_seed(0))
    assert b.prompt_lengths.tolist() == [4, 4, 4, 4, 8, 8, 8, 8]
    assert b.response_lengths.max() <= 3
    prev = sequence_logprobs(model, b.input_ids)
    assert float(((prev - b.generation_logprobs) * b.token_mask).abs().max()) < 1e-5


def test_select_and_cat_keep_rows_consistent():
    _, b = _batch()
    part = b.select([0, 5, 7])
    assert len(part) == 3 and part.problems[1] is b.problems[5]
    assert torch.equal(part.input_ids[2], b.input_ids[7])
    both = RolloutBatch.cat([part, b.select(torch.tensor([True] + [False] * 23))])
    assert len(both) == 4 and torch.equal(both.input_ids[3], b.input_ids[0])
    assert both.texts()[3] == b.texts()[0] and b.texts()[0].startswith("<bos>C")
    assert len(both.responses) == 4 and both.responses[0] == b.responses[0]


def test_bad_rollout_inputs_raise():
    model = TinyCausalLM(CFG, seed=0)
    problems = make_task("copy", 1).sample_prompts(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="num_generations_per_prompt"):
        rollout(model, problems, 0)
    with pytest.raises(TypeError, match="Problem"):
        rollout(model, [[1, 2, 3]], 1)
    with pytest.raises(ValueError, match="empty"):
        rollout(model, [], 1)
    with pytest.raises(ValueError, match="temperature"):
        rollout(model, problems, 1, temperature=-1.0)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 20], 10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [[1, 2]], 0)
    with pytest.raises(TypeError, match="dtype"):
        make_generation_model(model, torch.int8)
