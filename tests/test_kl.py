"""rlref.kl.calculate_kl: estimators, clamps, importance weights, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from rlref.kl import calculate_kl


def _lp(values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    ("kl_type", "formula"),
    [
        ("k1", lambda x: -x),
        ("k2", lambda x: 0.5 * x * x),
        ("k3", lambda x: math.exp(x) - 1 - x),
    ],
)
def test_estimators_follow_their_formulas_in_logr(kl_type, formula):
    logprobs = _lp([-1.0, -2.5, -0.1, -3.0])
    ref = _lp([-1.5, -0.5, -0.1, -4.0])
    kl = calculate_kl(logprobs, ref, kl_type, None, None)
    expected = [formula(r - p) for r, p in zip(ref.tolist(), logprobs.tolist(), strict=True)]
    assert kl.tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_k1_and_k3_expectations_equal_the_exact_kl_while_k2_does_not():
    # Exact expectation over a categorical policy: E_{x~pi}[k(x)] = sum_x pi(x) k(x).
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64) * 2, -1)
    logq = torch.log_softmax(torch.randn(50, generator=g, dtype=torch.float64) * 2, -1)
    p = logp.exp()
    exact = (p * (logp - logq)).sum().item()
    expect = {t: (p * calculate_kl(logp, logq, t, None, None)).sum().item() for t in ("k1", "k2", "k3")}
    assert expect["k1"] == pytest.approx(exact, rel=1e-10)
    assert expect["k3"] == pytest.approx(exact, rel=1e-10)
    assert abs(expect["k2"] - exact) > 1e-3 * exact  # k2 is a biased estimator


def test_input_clamp_caps_logr_and_zeroes_its_gradient():
    logprobs = _lp([0.0, 0.0, 0.0]).requires_grad_(True)
    ref = _lp([-5.0, 0.5, 5.0])
    kl = calculate_kl(logprobs, ref, "k1", input_clamp_value=1.0, output_clamp_value=None)
    assert kl.tolist() == [1.0, -0.5, -1.0]
    kl.sum().backward()
    assert logprobs.grad.tolist() == [0.0, 1.0, 0.0]


def test_output_clamp_caps_the_estimate():
    kl = calculate_kl(_lp([0.0, 0.0]), _lp([-6.0, 0.2]), "k2", None, output_clamp_value=2.0)
    assert kl.tolist() == pytest.approx([2.0, 0.02], rel=1e-12)


def test_none_disables_both_clamps():
    kl = calculate_kl(_lp([0.0]), _lp([30.0]), "k1", None, None)
    assert kl.item() == -30.0


def test_importance_weight_multiplies_before_the_output_clamp():
    w = _lp([3.0, 0.5])
    kl = calculate_kl(_lp([0.0, 0.0]), _lp([-1.0, -1.0]), "k1", None, 2.0, importance_sampling_weights=w)
    assert kl.tolist() == [2.0, 0.5]  # 3*1 = 3 clamped to 2; 0.5*1 = 0.5


def test_importance_weight_is_stop_gradiented_where_the_input_clamp_is_active():
    w = _lp([1.0, 1.0]).requires_grad_(True)
    kl = calculate_kl(_lp([0.0, 0.0]), _lp([-5.0, -0.5]), "k1", 1.0, None, importance_sampling_weights=w)
    kl.sum().backward()
    assert w.grad.tolist() == [0.0, 0.5]  # clamped entry: no gradient; free entry: dk/dw = k1 = 0.5


def test_default_clamps_are_20_and_10():
    kl = calculate_kl(_lp([0.0]), _lp([-25.0]), "k1")  # k1 = 20 after the input clamp, then 10
    assert kl.item() == 10.0


def test_rejects_unknown_kl_type():
    with pytest.raises(ValueError, match="kl_type must be one of .* got 'k4'"):
        calculate_kl(_lp([0.0]), _lp([0.0]), "k4")


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"logprobs \(2,\) and logprobs_reference \(3,\)"):
        calculate_kl(_lp([0.0, 0.0]), _lp([0.0, 0.0, 0.0]))


def test_rejects_non_float_and_non_tensor_inputs():
    with pytest.raises(TypeError, match="logprobs must be a floating tensor"):
        calculate_kl(torch.zeros(2, dtype=torch.int64), _lp([0.0, 0.0]))
    with pytest.raises(TypeError, match="logprobs_reference must be a torch.Tensor"):
        calculate_kl(_lp([0.0]), [0.0])


@pytest.mark.parametrize("name", ["input_clamp_value", "output_clamp_value"])
def test_rejects_non_positive_clamps(name):
    with pytest.raises(ValueError, match=f"{name} must be > 0 or None, got 0"):
        calculate_kl(_lp([0.0]), _lp([0.0]), **{name: 0})
    with pytest.raises(TypeError, match=f"{name} must be a positive number or None"):
        calculate_kl(_lp([0.0]), _lp([0.0]), **{name: "5"})


def test_rejects_bad_importance_weights():
    with pytest.raises(ValueError, match=r"importance_sampling_weights \(1,\) must have the shape"):
        calculate_kl(_lp([0.0, 0.0]), _lp([0.0, 0.0]), importance_sampling_weights=_lp([1.0]))
    with pytest.raises(TypeError, match="importance_sampling_weights must be a floating tensor"):
        calculate_kl(_lp([0.0]), _lp([0.0]), importance_sampling_weights=torch.ones(1, dtype=torch.int64))
