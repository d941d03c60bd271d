"""rlref.losses: hand-checked values, behaviour of each config knob, and every validation error."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from rlref.losses import (
    ClippedPGLoss,
    ClippedPGLossConfig,
    CrossTokenizerDistillationLoss,
    DistillationLoss,
    DPOLoss,
    DPOLossConfig,
    DraftCrossEntropyLoss,
    DraftLossWrapper,
    LossInputType,
    LossType,
    MseValueLoss,
    MseValueLossConfig,
    NLLLoss,
    PreferenceLoss,
    chunk_average,
    critic_explained_variance,
    distillation_topk_logprobs,
    draft_loss_inputs,
    exact_token_map,
    next_token_logprobs,
    topk_projection_matrix,
)

NEMO_DEFAULTS = {
    "disable_ppo_ratio": False,
    "token_level_loss": True,
    "sequence_level_importance_ratios": False,
    "ratio_clip_min": 0.2,
    "ratio_clip_max": 0.2,
    "ratio_clip_c": None,
    "reference_policy_kl_penalty": 0.01,
    "reference_policy_kl_type": "k3",
    "kl_input_clamp_value": 20.0,
    "kl_output_clamp_value": 10.0,
    "use_kl_in_reward": False,
    "use_importance_sampling_correction": False,
    "truncated_importance_sampling_type": None,
    "truncated_importance_sampling_ratio": None,
    "truncated_importance_sampling_ratio_min": None,
    "use_on_policy_kl_approximation": False,
    "force_on_policy_ratio": False,
    "use_cispo": False,
    "positive_example_nll_weight": 0.0,
}


def pg_batch(B=3, S=6, seed=0, dtype=torch.float64):
    """Random ClippedPG inputs in NeMo layout: curr [B,S-1], data tensors [B,S], sample_mask [B]."""
    g = torch.Generator().manual_seed(seed)

    def lp(*shape):
        return -torch.rand(*shape, generator=g, dtype=dtype) * 3

    curr = lp(B, S - 1)
    data = {
        "token_mask": (torch.rand(B, S, generator=g) > 0.3).to(dtype),
        "sample_mask": torch.ones(B, dtype=dtype),
        "advantages": torch.randn(B, S, generator=g, dtype=dtype),
        "prev_logprobs": torch.cat(
            [lp(B, 1), curr + 0.3 * torch.randn(B, S - 1, generator=g, dtype=dtype)], 1
        ),
        "generation_logprobs": lp(B, S),
        "reference_policy_logprobs": lp(B, S),
    }
    data["token_mask"][:, 1] = 1.0  # at least one valid token per row
    return curr, data


def call(loss_fn, curr, data, GS=None, GT=None):
    tm, sm = data["token_mask"][:, 1:], data["sample_mask"]
    GT = (tm * sm[:, None]).sum() if GT is None else GT
    GS = sm.sum() if GS is None else GS
    return loss_fn(next_token_logprobs=curr, data=data, global_valid_seqs=GS, global_valid_toks=GT)


def one_token(curr, prev, adv, dtype=torch.float64):
    """A single valid token: curr [1,1], data [1,2] (column 0 ignored)."""
    c = torch.tensor([[curr]], dtype=dtype)
    data = {
        "token_mask": torch.tensor([[0.0, 1.0]], dtype=dtype),
        "sample_mask": torch.tensor([1.0], dtype=dtype),
        "advantages": torch.tensor([[0.0, adv]], dtype=dtype),
        "prev_logprobs": torch.tensor([[0.0, prev]], dtype=dtype),
        "generation_logprobs": torch.tensor([[0.0, prev]], dtype=dtype),
        "reference_policy_logprobs": torch.tensor([[0.0, prev]], dtype=dtype),
    }
    return c, data


# --------------------------------------------------------------------------------------------------
# Types, configs and next_token_logprobs
# --------------------------------------------------------------------------------------------------


def test_clipped_pg_config_has_every_nemo_key_with_its_default():
    cfg = ClippedPGLossConfig()
    assert dataclasses.asdict(cfg) == NEMO_DEFAULTS
    assert len(NEMO_DEFAULTS) == 19


def test_dpo_config_defaults():
    assert dataclasses.asdict(DPOLossConfig()) == {
        "reference_policy_kl_penalty": 0.05,
        "preference_loss_weight": 1.0,
        "sft_loss_weight": 0.0,
        "preference_average_log_probs": False,
        "sft_average_log_probs": False,
    }


def test_loss_and_input_types():
    assert ClippedPGLoss().loss_type is LossType.TOKEN_LEVEL
    assert ClippedPGLoss(token_level_loss=False).loss_type is LossType.SEQUENCE_LEVEL
    assert DPOLoss().loss_type is LossType.SEQUENCE_LEVEL
    assert NLLLoss().loss_type is LossType.TOKEN_LEVEL
    for fn in (ClippedPGLoss(), DPOLoss(), NLLLoss()):
        assert fn.input_type is LossInputType.LOGPROB


def test_config_object_dict_and_overrides_are_equivalent():
    a = ClippedPGLoss(ClippedPGLossConfig(ratio_clip_max=0.28), ratio_clip_c=3.0).config
    b = ClippedPGLoss({"ratio_clip_max": 0.28, "ratio_clip_c": 3.0}).config
    c = ClippedPGLoss(ratio_clip_max=0.28, ratio_clip_c=3.0).config
    assert a == b == c
    assert DPOLoss(sft_loss_weight=0.5).config == DPOLoss({"sft_loss_weight": 0.5}).config


def test_next_token_logprobs_gathers_the_shifted_token():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 5, generator=g)
    ids = torch.randint(0, 5, (2, 4), generator=g)
    got = next_token_logprobs(logits, ids)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    for b in range(2):
        for t in range(3):
            expected = torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]]
            assert got[b, t].item() == pytest.approx(expected.item())


def test_next_token_logprobs_computes_in_float32_for_half_inputs():
    logits = torch.randn(1, 3, 4).to(torch.bfloat16)
    assert next_token_logprobs(logits, torch.zeros(1, 3, dtype=torch.int64)).dtype == torch.float32
    assert next_token_logprobs(logits.double(), torch.zeros(1, 3, dtype=torch.int64)).dtype == torch.float64


def test_next_token_logprobs_errors():
    ids = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="logits must be a floating tensor"):
        next_token_logprobs(torch.zeros(2, 4, 5, dtype=torch.int64), ids)
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        next_token_logprobs(torch.zeros(2, 4, 5), ids.float())
    with pytest.raises(ValueError, match=r"logits \(2, 3, 5\), input_ids \(2, 4\)"):
        next_token_logprobs(torch.zeros(2, 3, 5), ids)
    with pytest.raises(ValueError, match="S >= 2"):
        next_token_logprobs(torch.zeros(2, 1, 5), torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 5\)"):
        next_token_logprobs(torch.zeros(2, 4, 5), ids + 5)
    with pytest.raises(TypeError, match="must be torch.Tensors"):
        next_token_logprobs([[0.0]], ids)


# --------------------------------------------------------------------------------------------------
# ClippedPGLoss: hand-checked values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ratio", "adv", "expected"),
    [
        (1.5, 1.0, -1.2),  # A > 0, ratio above 1 + eps: the clipped term is the smaller objective
        (0.5, 1.0, -0.5),  # A > 0, ratio below 1 - eps: unclipped (pessimistic) term
        (0.5, -1.0, 0.8),  # A < 0, ratio below 1 - eps: clipped at 0.8
        (1.5, -1.0, 1.5),  # A < 0, ratio above 1 + eps: unclipped, loss grows with the ratio
    ],
)
def test_ppo_clip_takes_the_pessimistic_term(ratio, adv, expected):
    curr, data = one_token(math.log(ratio), 0.0, adv)
    loss, metrics = call(ClippedPGLoss(reference_policy_kl_penalty=0.0), curr, data)
    assert loss.item() == pytest.approx(expected, rel=1e-7)
    assert metrics["probs_ratio"] == pytest.approx(ratio, rel=1e-7)


def test_dual_clip_caps_the_loss_for_negative_advantages():
    curr, data = one_token(math.log(5.0), 0.0, -1.0)
    plain, _ = call(ClippedPGLoss(reference_policy_kl_penalty=0.0), curr, data)
    dual, _ = call(ClippedPGLoss(reference_policy_kl_penalty=0.0, ratio_clip_c=3.0), curr, data)
    assert plain.item() == pytest.approx(5.0, rel=1e-7)
    assert dual.item() == pytest.approx(3.0, rel=1e-7)


def test_asymmetric_clip_higher():
    curr, data = one_token(math.log(1.5), 0.0, 1.0)
    loss, m = call(ClippedPGLoss(reference_policy_kl_penalty=0.0, ratio_clip_max=0.28), curr, data)
    assert loss.item() == pytest.approx(-1.28, rel=1e-7)
    assert m["probs_ratio_clamped_max"] == pytest.approx(1.28, rel=1e-7)


def test_reinforce_mode_gradient_is_minus_advantage_over_tokens():
    curr, data = pg_batch(seed=1)
    curr.requires_grad_(True)
    loss, m = call(ClippedPGLoss(disable_ppo_ratio=True, reference_policy_kl_penalty=0.0), curr, data)
    loss.backward()
    mask = data["token_mask"][:, 1:]
    torch.testing.assert_close(curr.grad, -data["advantages"][:, 1:] * mask / (mask.sum() + 1e-8))
    # Quirk: REINFORCE mode reports log-probs as "probs_ratio".
    assert m["probs_ratio_max"] == pytest.approx(curr[mask.bool()].max().item())


def test_force_on_policy_ratio_is_one_and_ignores_prev_logprobs():
    curr, data = pg_batch(seed=2)
    del data["prev_logprobs"]
    curr.requires_grad_(True)
    loss, m = call(ClippedPGLoss(force_on_policy_ratio=True, reference_policy_kl_penalty=0.0), curr, data)
    loss.backward()
    mask = data["token_mask"][:, 1:]
    assert m["probs_ratio"] == pytest.approx(1.0, rel=1e-7)
    assert m["probs_ratio_min"] == m["probs_ratio_max"] == 1.0
    torch.testing.assert_close(curr.grad, -data["advantages"][:, 1:] * mask / (mask.sum() + 1e-8))


def test_column_zero_of_every_shifted_input_is_ignored():
    curr, data = pg_batch(seed=4)
    fn = ClippedPGLoss(ratio_clip_c=3.0, use_importance_sampling_correction=True)
    base_loss, base_metrics = call(fn, curr, data)
    changed = {k: v.clone() for k, v in data.items()}
    shifted = ("token_mask", "advantages", "prev_logprobs", "generation_logprobs",
               "reference_policy_logprobs")
    for k in shifted:
        changed[k][:, 0] = 1.0 if k == "token_mask" else -7.0
    loss, metrics = call(fn, curr, changed)
    assert loss.item() == base_loss.item()
    assert metrics == base_metrics


def test_kl_in_reward_removes_the_kl_term_and_needs_no_reference():
    curr, data = pg_batch(seed=5)
    with_kl, m_kl = call(ClippedPGLoss(reference_policy_kl_penalty=0.5), curr, data)
    no_kl, _ = call(ClippedPGLoss(reference_policy_kl_penalty=0.0), curr, data)
    del data["reference_policy_logprobs"]
    moved, m = call(ClippedPGLoss(reference_policy_kl_penalty=0.5, use_kl_in_reward=True), curr, data)
    assert moved.item() == no_kl.item() != with_kl.item()
    assert m["kl_penalty"] == 0.0 and m_kl["kl_penalty"] > 0.0


def test_kl_penalty_metric_is_the_kl_term_divided_by_beta():
    curr, data = pg_batch(seed=6)
    full, m = call(ClippedPGLoss(reference_policy_kl_penalty=0.25), curr, data)
    actor, _ = call(ClippedPGLoss(reference_policy_kl_penalty=0.0), curr, data)
    assert m["kl_penalty"] == pytest.approx((full.item() - actor.item()) / 0.25, rel=1e-9)


def test_is_oob_ratio_is_reported_only_with_truncation():
    curr, data = pg_batch(seed=7)
    _, plain = call(ClippedPGLoss(use_importance_sampling_correction=True), curr, data)
    assert "is_oob_ratio" not in plain
    for t_type in ("tis", "icepop", "seq-mask-tis"):
        fn = ClippedPGLoss(
            use_importance_sampling_correction=True,
            truncated_importance_sampling_type=t_type,
            truncated_importance_sampling_ratio=1.5,
            truncated_importance_sampling_ratio_min=0.5,
        )
        _, m = call(fn, curr, data)
        assert 0.0 <= m["is_oob_ratio"] <= 1.0


def test_no_valid_token_gives_zero_loss_and_infinite_extrema():
    curr, data = pg_batch(seed=8)
    data["sample_mask"] = torch.zeros_like(data["sample_mask"])
    loss, m = call(ClippedPGLoss(), curr, data, GS=0.0, GT=0.0)
    assert loss.item() == 0.0
    assert m["probs_ratio_min"] == math.inf and m["probs_ratio_clamped_min"] == math.inf
    assert m["probs_ratio_max"] == -math.inf and m["probs_ratio_clamped_max"] == -math.inf
    assert m["num_valid_samples"] == 0.0


def test_metric_names_match_nemo_rl():
    curr, data = pg_batch(seed=9)
    _, m = call(ClippedPGLoss(), curr, data)
    assert set(m) == {
        "loss", "probs_ratio", "probs_ratio_clamped", "probs_ratio_min", "probs_ratio_max",
        "probs_ratio_clamped_min", "probs_ratio_clamped_max", "kl_penalty", "token_mult_prob_error",
        "gen_kl_error", "policy_kl_error", "js_divergence_error", "sampling_importance_ratio",
        "num_valid_samples", "approx_entropy", "positive_nll_loss",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_loss_is_float32_for_float32_and_bfloat16_inputs_and_float64_for_float64():
    curr, data = pg_batch(seed=10, dtype=torch.float32)
    assert call(ClippedPGLoss(), curr, data)[0].dtype == torch.float32
    assert call(ClippedPGLoss(), curr.to(torch.bfloat16), data)[0].dtype == torch.float32
    curr64, data64 = pg_batch(seed=10)
    assert call(ClippedPGLoss(), curr64, data64)[0].dtype == torch.float64


def test_positive_example_nll_uses_only_rows_with_positive_reward():
    curr, data = pg_batch(seed=11)
    data["rewards"] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    _, m = call(ClippedPGLoss(positive_example_nll_weight=0.5), curr, data)
    row_mask = data["token_mask"][0, 1:]
    assert m["positive_nll_loss"] == pytest.approx((-(curr[0] * row_mask).sum() / row_mask.sum()).item())


# --------------------------------------------------------------------------------------------------
# NLL and DPO: hand-checked values
# --------------------------------------------------------------------------------------------------


def test_nll_token_mean_and_per_row_modes():
    curr = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]], dtype=torch.float64)
    data = {"token_mask": torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64),
            "sample_mask": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    loss, m = NLLLoss()(next_token_logprobs=curr, data=data, global_valid_seqs=2, global_valid_toks=3)
    assert loss.item() == pytest.approx(6.0 / 3, rel=1e-7)
    assert m == {"loss": pytest.approx(2.0, rel=1e-7), "num_unmasked_tokens": 3.0, "num_valid_samples": 2.0}
    counts = {"global_valid_seqs": 2, "global_valid_toks": 3}
    rows, m = NLLLoss(dpo_loss=True)(next_token_logprobs=curr, data=data, **counts)
    assert rows.tolist() == [3.0, 3.0] and m["loss"] == [3.0, 3.0]
    avg, _ = NLLLoss(True, True)(next_token_logprobs=curr, data=data, **counts)
    assert avg.tolist() == [1.5, 3.0]


def dpo_batch(P=2, S=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    curr = -torch.rand(2 * P, S - 1, generator=g, dtype=torch.float64) * 3
    data = {
        "reference_policy_logprobs": -torch.rand(2 * P, S, generator=g, dtype=torch.float64) * 3,
        "token_mask": (torch.rand(2 * P, S, generator=g) > 0.3).double(),
        "sample_mask": torch.ones(2 * P, dtype=torch.float64),
    }
    data["token_mask"][:, 1] = 1.0
    return curr, data


def test_dpo_single_pair_matches_the_sigmoid_formula():
    curr, data = dpo_batch(P=1, seed=1)
    tm = data["token_mask"][:, 1:]
    rho = ((curr - data["reference_policy_logprobs"][:, :-1]) * tm).sum(-1)
    beta = 0.1
    loss, m = call(DPOLoss(reference_policy_kl_penalty=beta), curr, data)
    assert loss.item() == pytest.approx(-F.logsigmoid(beta * (rho[0] - rho[1])).item(), rel=1e-7)
    assert m["rewards_chosen_mean"] == pytest.approx(rho[0].item(), rel=1e-7)
    assert m["rewards_rejected_mean"] == pytest.approx(rho[1].item(), rel=1e-7)
    assert m["accuracy"] == pytest.approx(float(rho[0] > rho[1]), abs=1e-7)
    assert m["num_valid_samples"] == 1.0


def test_dpo_reference_is_pre_rolled_last_column_ignored():
    curr, data = dpo_batch(seed=2)
    base, _ = call(DPOLoss(), curr, data)
    data["reference_policy_logprobs"][:, -1] = 99.0
    assert call(DPOLoss(), curr, data)[0].item() == base.item()
    data["reference_policy_logprobs"][:, 0] = 99.0
    assert call(DPOLoss(), curr, data)[0].item() != base.item()


def test_dpo_sft_term_is_the_chosen_rows_nll():
    curr, data = dpo_batch(P=1, seed=3)
    loss, m = call(DPOLoss(preference_loss_weight=0.0, sft_loss_weight=1.0), curr, data)
    tm = data["token_mask"][0, 1:]
    assert loss.item() == pytest.approx(-(curr[0] * tm).sum().item(), rel=1e-7)
    assert m["sft_loss"] == pytest.approx(loss.item())


# --------------------------------------------------------------------------------------------------
# Validation errors: configs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"token_level_loss": 1}, TypeError, "token_level_loss must be a bool, got 1"),
        ({"use_cispo": "yes"}, TypeError, "use_cispo must be a bool"),
        ({"ratio_clip_min": -0.1}, ValueError, "ratio_clip_min must be >= 0, got -0.1"),
        ({"ratio_clip_max": "0.2"}, TypeError, "ratio_clip_max must be a number"),
        ({"reference_policy_kl_penalty": -1.0}, ValueError, "reference_policy_kl_penalty must be >= 0"),
        ({"positive_example_nll_weight": -0.5}, ValueError, "positive_example_nll_weight must be >= 0"),
        ({"ratio_clip_c": 1.0}, ValueError, r"ratio_clip_c \(dual clip\) must be > 1 or None, got 1.0"),
        ({"ratio_clip_c": float("nan")}, TypeError, "ratio_clip_c must be a number or None"),
        ({"reference_policy_kl_type": "k4"}, ValueError, "reference_policy_kl_type must be one of .* 'k4'"),
        ({"kl_input_clamp_value": 0.0}, ValueError, "kl_input_clamp_value must be > 0 or None, got 0.0"),
        ({"kl_output_clamp_value": -1}, ValueError, "kl_output_clamp_value must be > 0 or None, got -1"),
        ({"sequence_level_importance_ratios": True}, ValueError,
         "sequence_level_importance_ratios=True \\(GSPO\\) requires token_level_loss=False"),
        ({"use_cispo": True, "disable_ppo_ratio": True}, ValueError,
         "use_cispo=True is incompatible with disable_ppo_ratio=True"),
        ({"use_cispo": True, "force_on_policy_ratio": True}, ValueError,
         "use_cispo=True is incompatible with force_on_policy_ratio=True"),
        ({"use_cispo": True, "sequence_level_importance_ratios": True, "token_level_loss": False}, ValueError,
         "use_cispo=True is incompatible with sequence_level_importance_ratios=True"),
        ({"use_cispo": True, "token_level_loss": False}, ValueError,
         "use_cispo=True is incompatible with token_level_loss=False"),
        ({"use_cispo": True, "ratio_clip_c": 3.0}, ValueError,
         "use_cispo=True is incompatible with dual clipping: ratio_clip_c=3.0"),
        ({"truncated_importance_sampling_type": "clip", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 2.0}, ValueError,
         "truncated_importance_sampling_type must be one of .* got 'clip'"),
        ({"truncated_importance_sampling_type": "tis", "truncated_importance_sampling_ratio": 2.0},
         ValueError,
         "truncated_importance_sampling_type='tis' requires use_importance_sampling_correction=True"),
        ({"truncated_importance_sampling_type": "tis", "use_importance_sampling_correction": True},
         ValueError,
         "requires truncated_importance_sampling_ratio > 0, got None"),
        ({"truncated_importance_sampling_type": "tis", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 0.0}, ValueError,
         "requires truncated_importance_sampling_ratio > 0, got 0.0"),
        ({"truncated_importance_sampling_type": "icepop", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 2.0}, ValueError,
         "truncated_importance_sampling_type='icepop' requires truncated_importance_sampling_ratio_min"),
        ({"truncated_importance_sampling_type": "seq-mask-tis", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 2.0}, ValueError,
         "'seq-mask-tis' requires truncated_importance_sampling_ratio_min"),
        ({"truncated_importance_sampling_type": "tis", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 2.0, "truncated_importance_sampling_ratio_min": 3.0},
         ValueError,
         "truncated_importance_sampling_ratio_min=3.0 must be <= truncated_importance_sampling_ratio=2.0"),
        ({"truncated_importance_sampling_type": "seq-mask-tis", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 2.0, "truncated_importance_sampling_ratio_min": 0.5,
          "sequence_level_importance_ratios": True, "token_level_loss": False}, ValueError,
         "'seq-mask-tis' is incompatible with sequence_level_importance_ratios=True"),
        ({"truncated_importance_sampling_ratio": 2.0}, ValueError,
         "truncated_importance_sampling_type is None, so they would be ignored"),
        ({"truncated_importance_sampling_type": "tis", "use_importance_sampling_correction": True,
          "truncated_importance_sampling_ratio": 2.0, "truncated_importance_sampling_ratio_min": -1.0},
         ValueError, "truncated_importance_sampling_ratio_min must be >= 0, got -1.0"),
        ({"truncated_importance_sampling_ratio": "2"}, TypeError,
         "truncated_importance_sampling_ratio must be a number or None"),
    ],
)
def test_clipped_pg_config_validation(overrides, error, match):
    with pytest.raises(error, match=match):
        ClippedPGLossConfig(**overrides)


def test_unknown_config_keys_are_rejected_by_name():
    with pytest.raises(TypeError, match=r"unknown ClippedPGLossConfig key\(s\) \['entropy_coef'\]"):
        ClippedPGLoss(entropy_coef=0.01)
    with pytest.raises(TypeError, match=r"unknown DPOLossConfig key\(s\) \['beta'\]"):
        DPOLoss({"beta": 0.1})
    with pytest.raises(TypeError, match="config must be a ClippedPGLossConfig, a dict or None"):
        ClippedPGLoss(DPOLossConfig())


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"reference_policy_kl_penalty": -0.1}, ValueError, "reference_policy_kl_penalty must be >= 0"),
        ({"preference_loss_weight": -1.0}, ValueError, "preference_loss_weight must be >= 0"),
        ({"sft_loss_weight": None}, TypeError, "sft_loss_weight must be a number"),
        ({"preference_average_log_probs": 1}, TypeError, "preference_average_log_probs must be a bool"),
        ({"sft_average_log_probs": "no"}, TypeError, "sft_average_log_probs must be a bool"),
    ],
)
def test_dpo_config_validation(overrides, error, match):
    with pytest.raises(error, match=match):
        DPOLossConfig(**overrides)


def test_nll_arguments_must_be_bools():
    with pytest.raises(TypeError, match="dpo_loss must be a bool"):
        NLLLoss(dpo_loss=1)
    with pytest.raises(TypeError, match="dpo_average_log_probs must be a bool"):
        NLLLoss(dpo_average_log_probs="yes")


# --------------------------------------------------------------------------------------------------
# Validation errors: inputs
# --------------------------------------------------------------------------------------------------


def test_missing_data_key_is_named():
    curr, data = pg_batch()
    del data["advantages"]
    with pytest.raises(ValueError, match="data is missing the required key 'advantages'"):
        call(ClippedPGLoss(), curr, data, GS=3, GT=5)
    curr, data = pg_batch()
    del data["reference_policy_logprobs"]
    with pytest.raises(ValueError, match="missing the required key 'reference_policy_logprobs'"):
        call(ClippedPGLoss(), curr, data)


def test_wrong_shape_names_the_key_and_shapes():
    curr, data = pg_batch(B=3, S=6)
    data["generation_logprobs"] = data["generation_logprobs"][:, 1:]
    match = r"data\['generation_logprobs'\] must have shape \(3, 6\), got \(3, 5\)"
    with pytest.raises(ValueError, match=match):
        call(ClippedPGLoss(), curr, data)
    curr, data = pg_batch(B=3, S=6)
    with pytest.raises(ValueError, match=r"data\['sample_mask'\] must have shape \(2,\), got \(3,\)"):
        cut = {k: (v[:2] if k != "sample_mask" else v) for k, v in data.items()}
        call(ClippedPGLoss(), curr[:2], cut, 2, 5)


def test_masks_must_be_floating_zero_one_and_sample_weights_finite_nonnegative():
    curr, data = pg_batch()
    data["token_mask"] = data["token_mask"].bool()
    with pytest.raises(TypeError, match=r"data\['token_mask'\] must be a floating tensor.*use .float\(\)"):
        call(ClippedPGLoss(), curr, data, GS=3, GT=5)
    curr, data = pg_batch()
    data["token_mask"] = data["token_mask"] * 0.5
    with pytest.raises(ValueError, match=r"data\['token_mask'\] must contain only 0 and 1"):
        call(ClippedPGLoss(), curr, data, GS=3, GT=5)
    for bad in (-1.0, float("nan"), float("inf")):
        curr, data = pg_batch()
        data["sample_mask"][0] = bad
        with pytest.raises(ValueError, match=r"data\['sample_mask'\] must hold finite weights >= 0"):
            call(ClippedPGLoss(), curr, data, GS=3, GT=5)


@pytest.mark.parametrize("token_level_loss", [True, False])
def test_a_sample_weight_of_two_equals_the_row_counted_twice(token_level_loss):
    """``sample_mask`` is NeMo RL's float loss multiplier (nemo_rl/data/interfaces.py:39): weighting a
    row by 2 gives the loss and gradient of the batch with that row duplicated (same normalisers)."""
    curr, data = pg_batch()
    cfg = ClippedPGLossConfig(reference_policy_kl_penalty=0.01, token_level_loss=token_level_loss)
    weighted = {k: v.clone() for k, v in data.items()}
    weighted["sample_mask"][0] = 2.0
    dup = {k: torch.cat([v, v[:1]]) for k, v in data.items()}
    c1 = curr.clone().requires_grad_(True)
    c2 = torch.cat([curr, curr[:1]]).clone().requires_grad_(True)
    l1, _ = call(ClippedPGLoss(cfg), c1, weighted, GS=4, GT=9)
    l2, _ = call(ClippedPGLoss(cfg), c2, dup, GS=4, GT=9)
    torch.testing.assert_close(l1, l2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(c1.grad[0], c2.grad[0] + c2.grad[-1])
    torch.testing.assert_close(c1.grad[1:], c2.grad[1:-1])


def test_data_values_must_be_floating_tensors():
    curr, data = pg_batch()
    data["advantages"] = data["advantages"].tolist()
    with pytest.raises(TypeError, match=r"data\['advantages'\] must be a torch.Tensor, got list"):
        call(ClippedPGLoss(), curr, data, GS=3, GT=5)
    with pytest.raises(TypeError, match="data must be a dict of tensors, got list"):
        ClippedPGLoss()(next_token_logprobs=curr, data=[1], global_valid_seqs=1, global_valid_toks=1)


def test_next_token_logprobs_input_is_checked():
    _, data = pg_batch()
    with pytest.raises(TypeError, match="next_token_logprobs must be a floating tensor"):
        call(ClippedPGLoss(), torch.zeros(3, 5, dtype=torch.int64), data, GS=3, GT=5)
    with pytest.raises(ValueError, match=r"next_token_logprobs must be \[B, S-1\], got shape \(15,\)"):
        call(ClippedPGLoss(), torch.zeros(15), data, GS=3, GT=5)
    with pytest.raises(TypeError, match="next_token_logprobs must be a torch.Tensor"):
        call(NLLLoss(), [[0.0]], data, GS=3, GT=5)


@pytest.mark.parametrize(
    ("gs", "gt", "error", "match"),
    [
        (3, -1.0, ValueError, "global_valid_toks must be a finite count >= 0, got -1.0"),
        (float("nan"), 5, ValueError, "global_valid_seqs must be a finite count >= 0"),
        (3, torch.ones(2), ValueError, r"global_valid_toks must hold a single number, got shape \(2,\)"),
        (None, 5, TypeError, "global_valid_seqs must be a number or a 0-d tensor, got None"),
        (3, "5", TypeError, "global_valid_toks must be a number or a 0-d tensor, got str"),
    ],
)
def test_global_counts_are_checked(gs, gt, error, match):
    curr, data = pg_batch()
    for fn in (ClippedPGLoss(), NLLLoss()):
        with pytest.raises(error, match=match):
            fn(next_token_logprobs=curr, data=data, global_valid_seqs=gs, global_valid_toks=gt)


def test_dpo_needs_an_even_batch():
    curr, data = dpo_batch(P=2)
    odd = {k: v[:3] for k, v in data.items()}
    with pytest.raises(ValueError, match="DPO needs an even number of rows .* got B=3"):
        call(DPOLoss(), curr[:3], odd)


def test_rewards_for_positive_nll_are_checked():
    curr, data = pg_batch()
    data["rewards"] = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"data\['rewards'\] must have shape \(3,\), got \(2,\)"):
        call(ClippedPGLoss(positive_example_nll_weight=0.1), curr, data)


# --------------------------------------------------------------------------------------------------
# MseValueLoss
# --------------------------------------------------------------------------------------------------


def value_batch(B=3, S=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(B, S, generator=g, dtype=torch.float64)
    data = {
        "returns": torch.randn(B, S, generator=g, dtype=torch.float64),
        "values": values + 0.5 * torch.randn(B, S, generator=g, dtype=torch.float64),
        "token_mask": (torch.rand(B, S, generator=g) > 0.3).to(torch.float64),
        "sample_mask": torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)[:B],
    }
    return values, data


def test_value_loss_without_clipping_is_half_the_masked_mse():
    v, data = value_batch()
    m = data["token_mask"] * data["sample_mask"][:, None]
    gt = float(m.sum())
    loss, metrics = MseValueLoss(scale=2.0)(v, data, 2, gt)
    expected = 2.0 * 0.5 * float((m * (v - data["returns"]) ** 2).sum()) / (gt + 1e-8)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert metrics["vf_clipfrac"] == 0.0
    assert metrics["num_valid_samples"] == 3
    assert metrics["values_min"] == pytest.approx(float(v[m.bool()].min()))
    assert metrics["values_max"] == pytest.approx(float(v[m.bool()].max()))


def test_value_clipping_takes_the_larger_error_per_token():
    values = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    data = {
        "returns": torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64),
        "values": torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64),
        "token_mask": torch.ones(1, 3, dtype=torch.float64),
        "sample_mask": torch.ones(1, dtype=torch.float64),
    }
    # c = 0.5: clipped predictions [0.5, 0, 0.5]; squared errors unclipped [4, 0, 4], clipped [0.25, 0, 6.25]
    loss, metrics = MseValueLoss(cliprange=0.5)(values, data, 1, 3)
    assert float(loss) == pytest.approx(0.5 * (4 + 0 + 6.25) / 3)
    assert metrics["vf_clipfrac"] == pytest.approx(1 / 3)
    # cliprange 0 disables clipping (as in NeMo RL) and then data["values"] is not needed
    no_old = {k: v for k, v in data.items() if k != "values"}
    loss0, _ = MseValueLoss(cliprange=0.0)(values, no_old, 1, 3)
    assert float(loss0) == pytest.approx(0.5 * (4 + 0 + 4) / 3)


def test_value_loss_gradient_and_trailing_singleton():
    v, data = value_batch()
    m = data["token_mask"] * data["sample_mask"][:, None]
    x = v.unsqueeze(-1).clone().requires_grad_(True)
    loss, _ = MseValueLoss()(x, data, 2, float(m.sum()))
    loss.backward()
    expected = (m * (v - data["returns"]) / m.sum()).unsqueeze(-1)
    torch.testing.assert_close(x.grad, expected)


def test_value_metrics_add_up_over_micro_batches_and_give_explained_variance():
    v, data = value_batch(B=4, S=6, seed=3)
    data["sample_mask"] = torch.ones(4, dtype=torch.float64)
    m = data["token_mask"]
    gt = float(m.sum())
    fn = MseValueLoss(cliprange=0.2)
    _, full = fn(v, data, 4, gt)
    parts = [fn(v[i : i + 2], {k: t[i : i + 2] for k, t in data.items()}, 4, gt)[1] for i in (0, 2)]
    for key in ("loss", "returns_mean", "values_mean", "returns_sq_mean", "residual_sq_mean", "vf_clipfrac"):
        assert sum(p[key] for p in parts) == pytest.approx(full[key], rel=1e-12)
    assert min(p["values_min"] for p in parts) == full["values_min"]
    r, vv = data["returns"][m.bool()], v[m.bool()]
    ev = 1 - torch.var(r - vv, unbiased=False) / torch.var(r, unbiased=False)
    assert critic_explained_variance(full) == pytest.approx(float(ev), rel=1e-9)


def test_value_loss_with_nothing_valid_is_zero_with_zero_extrema():
    v, data = value_batch()
    data["sample_mask"] = torch.zeros(3, dtype=torch.float64)
    loss, metrics = MseValueLoss()(v, data, 0, 0)
    assert float(loss) == 0.0 and metrics["values_min"] == 0.0 and metrics["values_max"] == 0.0


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"scale": -1.0}, ValueError, "scale must be >= 0"),
        ({"cliprange": -0.1}, ValueError, "cliprange must be >= 0 or None"),
        ({"cliprange": "0.2"}, TypeError, "cliprange must be a number or None"),
        ({"clip_range": 0.2}, TypeError, r"unknown MseValueLossConfig key\(s\) \['clip_range'\]"),
    ],
)
def test_value_loss_config_validation(overrides, error, match):
    with pytest.raises(error, match=match):
        MseValueLoss(**overrides)


def test_value_loss_input_errors():
    v, data = value_batch()
    with pytest.raises(ValueError, match=r"must be \[B, S\] or \[B, S, 1\], got shape \(3, 5, 2\)"):
        MseValueLoss()(torch.zeros(3, 5, 2, dtype=torch.float64), data, 2, 5)
    with pytest.raises(TypeError, match="must be a floating tensor"):
        MseValueLoss()(torch.zeros(3, 5, dtype=torch.long), data, 2, 5)
    with pytest.raises(ValueError, match="missing the required key 'values'"):
        MseValueLoss(cliprange=0.2)(v, {k: t for k, t in data.items() if k != "values"}, 2, 5)
    with pytest.raises(ValueError, match=r"data\['returns'\] must have shape \(3, 5\)"):
        MseValueLoss()(v, {**data, "returns": data["returns"][:, 1:]}, 2, 5)
    with pytest.raises(ValueError, match="metrics is missing"):
        critic_explained_variance({"returns_mean": 0.0})
    assert MseValueLossConfig() == MseValueLoss().config


# --------------------------------------------------------------------------------------------------
# PreferenceLoss
# --------------------------------------------------------------------------------------------------


def test_preference_loss_is_bradley_terry_over_chosen_pairs():
    r = torch.tensor([2.0, 0.5, -1.0, 1.0, 3.0, 3.0], dtype=torch.float64)
    sm = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    loss, m = PreferenceLoss()(r.unsqueeze(-1), {"sample_mask": sm}, 4, None)
    expected = (-F.logsigmoid(torch.tensor(1.5)) - F.logsigmoid(torch.tensor(-2.0))) / 2
    assert float(loss) == pytest.approx(float(expected))
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["rewards_chosen_mean"] == pytest.approx((2.0 - 1.0) / 2)
    assert m["rewards_rejected_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["num_valid_samples"] == 2.0
    x = r.clone().requires_grad_(True)
    PreferenceLoss()(x, {"sample_mask": sm}, 4, None)[0].backward()
    assert x.grad[4] == 0 and x.grad[0] == pytest.approx(-float(torch.sigmoid(torch.tensor(-1.5))) / 2)


def test_preference_loss_input_errors():
    with pytest.raises(ValueError, match="even number of rows"):
        PreferenceLoss()(torch.zeros(3), {"sample_mask": torch.ones(3)}, 2, None)
    with pytest.raises(ValueError, match=r"must be \[B\] or \[B, 1\]"):
        PreferenceLoss()(torch.zeros(2, 3), {"sample_mask": torch.ones(2)}, 2, None)
    with pytest.raises(ValueError, match="missing the required key 'sample_mask'"):
        PreferenceLoss()(torch.zeros(2), {}, 2, None)


# --------------------------------------------------------------------------------------------------
# DistillationLoss
# --------------------------------------------------------------------------------------------------


def distill_batch(k=3, V=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(2 * 4)]).reshape(2, 4, k)
    data = {"teacher_topk_logits": torch.randn(2, 4, k, generator=g, dtype=torch.float64),
            "teacher_topk_indices": ids, "token_mask": torch.ones(2, 4, dtype=torch.float64),
            "sample_mask": torch.ones(2, dtype=torch.float64)}
    return torch.randn(2, 4, V, generator=g, dtype=torch.float64), data


def test_distillation_full_topk_equals_exact_kl_and_zero_at_teacher():
    V = 6
    logits, data = distill_batch(k=V)
    data["teacher_topk_indices"] = torch.arange(V).expand(2, 4, V)
    teacher = data["teacher_topk_logits"]
    gt = 6.0
    p_t = torch.softmax(teacher[:, :-1], -1)
    p_s = torch.softmax(logits[:, :-1], -1)
    fwd = (p_t * (p_t.log() - p_s.log())).sum() / gt
    rev = (p_s * (p_s.log() - p_t.log())).sum() / gt
    for z in (False, True):  # with all V ids, zero_outside_topk changes nothing (P_rest = H_rest = 0)
        f, _ = DistillationLoss(kl_type="forward", zero_outside_topk=z)(logits, data, 2, gt)
        r, _ = DistillationLoss(kl_type="reverse", zero_outside_topk=z)(logits, data, 2, gt)
        mixed = DistillationLoss(kl_type="mixed", mixed_kl_weight=0.25, zero_outside_topk=z)
        m, _ = mixed(logits, data, 2, gt)
        assert float(f) == pytest.approx(float(fwd), rel=1e-8)
        assert float(r) == pytest.approx(float(rev), rel=1e-8)
        assert float(m) == pytest.approx(0.25 * float(fwd) + 0.75 * float(rev), rel=1e-8)
    same, _ = DistillationLoss(kl_type="mixed")(teacher, data, 2, gt)
    assert abs(float(same)) < 1e-12


def test_distillation_zero_outside_topk_reverse_charges_mass_outside():
    logits, data = distill_batch(k=2)
    s, t, h = distillation_topk_logprobs(logits, data["teacher_topk_logits"], data["teacher_topk_indices"],
                                         zero_outside_topk=True, calculate_entropy=True)
    p_full = torch.softmax(logits[:, :-1], -1)
    torch.testing.assert_close(h, (p_full * p_full.log()).sum(-1))
    ps = s.exp()
    per_tok = (ps * (s - t)).sum(-1) + (h - (ps * s).sum(-1)) + 100.0 * (1 - ps.sum(-1))
    loss, _ = DistillationLoss(kl_type="reverse", zero_outside_topk=True)(logits, data, 2, 6.0)
    assert float(loss) == pytest.approx(float(per_tok.sum() / 6.0), rel=1e-8)
    # masking: the last column of token_mask[:, 1:] and the second row drop out
    data["token_mask"][:, -1] = 0
    data["sample_mask"][1] = 0
    loss, _ = DistillationLoss(kl_type="reverse", zero_outside_topk=True)(logits, data, 1, 2.0)
    assert float(loss) == pytest.approx(float(per_tok[0, :2].sum() / 2.0), rel=1e-8)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [({"kl_type": "js"}, ValueError, "kl_type must be one of"),
     ({"mixed_kl_weight": 1.5}, ValueError, r"mixed_kl_weight must lie in \[0, 1\]"),
     ({"zero_outside_topk": 1}, TypeError, "zero_outside_topk must be a bool"),
     ({"topk": 3}, TypeError, "unknown DistillationLossConfig key")],
)
def test_distillation_config_validation(overrides, error, match):
    with pytest.raises(error, match=match):
        DistillationLoss(**overrides)


def test_distillation_input_errors():
    logits, data = distill_batch()
    with pytest.raises(ValueError, match="missing the required key 'teacher_topk_indices'"):
        DistillationLoss()(logits, {k: v for k, v in data.items() if k != "teacher_topk_indices"}, 2, 6)
    with pytest.raises(ValueError, match=r"teacher_topk_indices must lie in \[0, 6\)"):
        DistillationLoss()(logits, {**data, "teacher_topk_indices": data["teacher_topk_indices"] + 6}, 2, 6)
    with pytest.raises(TypeError, match="teacher_topk_indices must be an integer tensor"):
        as_float = data["teacher_topk_indices"].double()
        DistillationLoss()(logits, {**data, "teacher_topk_indices": as_float}, 2, 6)
    with pytest.raises(ValueError, match="H_all must be a"):
        DistillationLoss(kl_type="reverse", zero_outside_topk=True).from_topk_logprobs(
            torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), None, data, 2, 6)


# --------------------------------------------------------------------------------------------------
# DraftCrossEntropyLoss / DraftLossWrapper
# --------------------------------------------------------------------------------------------------


def test_draft_inputs_shift_left_and_map_the_draft_vocab():
    logits = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    tm = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    teacher, mask = draft_loss_inputs(logits, tm)
    torch.testing.assert_close(teacher[:, :2], logits[:, 1:])
    assert teacher[:, 2].abs().sum() == 0
    assert mask.tolist() == [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    d2t = torch.tensor([1, 1])  # draft ids 0, 1 -> policy ids 1, 2
    teacher, _ = draft_loss_inputs(logits, tm, d2t)
    torch.testing.assert_close(teacher[:, :2], logits[:, 1:, 1:3])
    with pytest.raises(ValueError, match="outside the policy vocabulary"):
        draft_loss_inputs(logits, tm, torch.tensor([3, 3]))


def test_draft_soft_ce_value_and_gradient_match_forward_kl():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    student = torch.randn(2, 3, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    tm = torch.ones(2, 3, dtype=torch.float64)
    data = {"sample_mask": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    loss = DraftCrossEntropyLoss()(teacher, student, tm, data, 1, 3.0)
    p_t = torch.softmax(teacher, -1)
    ce = -(p_t * torch.log_softmax(student.detach(), -1)).sum(-1)
    assert loss.item() == pytest.approx(float(ce[0].sum() / 3.0), rel=1e-8)
    loss.backward()
    torch.testing.assert_close(student.grad[0], (torch.softmax(student.detach()[0], -1) - p_t[0]) / 3.0)
    assert student.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="must have the same shape"):
        DraftCrossEntropyLoss()(teacher, student[..., :4], tm, data, 1, 3.0)


def test_draft_loss_wrapper_with_a_logprob_policy_loss():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 4, 5, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 5, (1, 4), generator=g)
    data = {"input_ids": ids, "token_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]], dtype=torch.float64),
            "sample_mask": torch.ones(1, dtype=torch.float64),
            "student_logits": torch.randn(1, 4, 5, generator=g, dtype=torch.float64)}
    nll, _ = NLLLoss()(next_token_logprobs(logits, ids), data, 1, 3.0)
    loss, m = DraftLossWrapper(NLLLoss(), loss_weight=0.1)(logits, data, 1, 3.0)
    teacher, mask = draft_loss_inputs(logits, data["token_mask"])
    draft = DraftCrossEntropyLoss()(teacher, data["student_logits"], mask, data, 1, 3.0)
    assert float(loss) == pytest.approx(float(nll) + 0.1 * float(draft), rel=1e-12)
    assert m["draft_loss"] == pytest.approx(float(draft))
    with pytest.raises(ValueError, match="global_valid_toks is required"):
        DraftLossWrapper(NLLLoss())(logits, data, 1, None)


# --------------------------------------------------------------------------------------------------
# CrossTokenizerDistillationLoss
# --------------------------------------------------------------------------------------------------


def identity_projection(V):
    ind = torch.full((V, 2), -1, dtype=torch.long)
    ind[:, 0] = torch.arange(V)
    lik = torch.zeros(V, 2)
    lik[:, 0] = 1.0
    return ind, lik


def ct_batch(V=5, T=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (1, T), generator=g)
    chunk = torch.arange(T).unsqueeze(0)
    return torch.randn(1, T, V, generator=g, dtype=torch.float64), {
        "input_ids": ids, "token_mask": torch.ones(1, T, dtype=torch.float64),
        "sample_mask": torch.ones(1, dtype=torch.float64),
        "teacher_logits": torch.randn(1, T, V, generator=g, dtype=torch.float64),
        "student_chunk_id": chunk, "teacher_chunk_id": chunk.clone(),
        "pair_valid": torch.ones(1, T, dtype=torch.bool)}


@pytest.mark.parametrize("gold", [False, True])
def test_cross_tokenizer_with_identical_tokenizers_is_the_per_token_kl(gold):
    """Identity projection, one token per chunk: both paths are T^2 KL(teacher || student) per position."""
    V, T_ = 5, 2.0
    logits, data = ct_batch(V)
    fn = CrossTokenizerDistillationLoss(identity_projection(V), V, gold_loss=gold, temperature=T_,
                                        vocab_topk=V, dynamic_loss_scaling=False, ce_loss_scale=0.0)
    kd, m = fn.kd_term(logits, data["teacher_logits"], data)
    p_t = torch.softmax(data["teacher_logits"][:, :-1] / T_, -1)
    p_s = torch.softmax(logits[:, :-1] / T_, -1)
    expected = T_ * T_ * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert float(kd) == pytest.approx(float(expected), rel=1e-6)
    if gold:
        assert m["l1_uncommon"] == 0.0 and m["num_valid_chunks"] == 3
    loss, metrics = fn(logits, data, 1, 3.0)
    assert float(loss) == pytest.approx(float(kd))  # ce_loss_scale = 0
    assert metrics["kl_loss_t0"] == pytest.approx(float(kd)) and metrics["weight_t0"] == 1.0


def test_cross_tokenizer_dynamic_scaling_matches_ce_magnitude():
    logits, data = ct_batch()
    fn = CrossTokenizerDistillationLoss(identity_projection(5), 5, dynamic_loss_scaling=True)
    loss, m = fn(logits, data, 1, 3.0)
    assert m["kl_loss_scale"] == pytest.approx(m["ce_loss"] / m["kl_loss"])
    assert float(loss) == pytest.approx(2 * m["ce_loss"])


def test_cross_tokenizer_chunking_averages_positions():
    """Two student tokens in one chunk: the student side is the mean of the two distributions."""
    V = 3
    logits = torch.randn(1, 3, V, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    teacher = torch.randn(1, 2, V, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    data = {"sample_mask": torch.ones(1, dtype=torch.float64), "student_chunk_id": torch.tensor([[-1, 0, 0]]),
            "teacher_chunk_id": torch.tensor([[-1, 0]]), "pair_valid": torch.ones(1, 1, dtype=torch.bool)}
    fn = CrossTokenizerDistillationLoss(identity_projection(V), V, vocab_topk=V)
    kd, m = fn.kd_term(logits, teacher, data)
    q_s = torch.softmax(logits[0, :2], -1).mean(0)
    log_q_t = torch.log_softmax(teacher[0, 0], -1)
    expected = (log_q_t.exp() * (log_q_t - q_s.log())).sum()
    assert float(kd) == pytest.approx(float(expected), rel=1e-6)
    assert m["num_valid_pairs"] == 1
    avg, sizes = chunk_average(torch.ones(1, 3, 2), torch.tensor([[0, 0, -1]]), 2)
    assert sizes.tolist() == [[2.0, 0.0]]


def test_cross_tokenizer_validation():
    with pytest.raises(ValueError, match="xtoken_loss=True requires gold_loss=True"):
        CrossTokenizerDistillationLoss(identity_projection(3), 3, xtoken_loss=True)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        CrossTokenizerDistillationLoss(identity_projection(3), 3, temperature=0.0)
    with pytest.raises(TypeError, match="projection must be an"):
        CrossTokenizerDistillationLoss(torch.zeros(3, 3), 3)
    logits, data = ct_batch(V=3)
    fn = CrossTokenizerDistillationLoss(identity_projection(3), 3)
    with pytest.raises(ValueError, match="pair_valid"):
        fn(logits, {**data, "pair_valid": data["pair_valid"].long()}, 1, 3.0)
    with pytest.raises(ValueError, match="exact_token_match_only needs"):
        exact_only = CrossTokenizerDistillationLoss(identity_projection(3), 3, exact_token_match_only=True)
        exact_only(logits, data, 1, 3.0)
    M = topk_projection_matrix(*identity_projection(3), 3)
    torch.testing.assert_close(M, torch.eye(3))
    assert exact_token_map(*identity_projection(3), 3)["uncommon_student"].numel() == 0
