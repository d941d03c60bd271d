"""rlref.masking: masked means with NeMo RL's global normalisation."""

from __future__ import annotations

import pytest
import torch

from rlref.masking import EPS, masked_mean, sequence_mean, token_mean


def test_masked_mean_defaults_to_the_mask_count():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert masked_mean(v, m).item() == pytest.approx((1 + 3 + 5) / (3 + EPS), rel=1e-7)


def test_masked_mean_divides_by_the_global_factor():
    v = torch.tensor([2.0, 4.0])
    m = torch.tensor([1.0, 1.0])
    assert masked_mean(v, m, global_normalization_factor=10).item() == pytest.approx(0.6, rel=1e-6)
    assert masked_mean(v, m, torch.tensor(10.0)).item() == pytest.approx(0.6, rel=1e-6)


def test_microbatch_shares_add_up_to_the_full_batch_mean():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(8, 5, generator=g, dtype=torch.float64)
    m = (torch.rand(8, 5, generator=g) > 0.4).double()
    total = m.sum()
    shares = sum(masked_mean(v[i : i + 3], m[i : i + 3], total) for i in range(0, 8, 3))
    torch.testing.assert_close(shares, masked_mean(v, m), rtol=1e-12, atol=1e-12)


def test_all_masked_gives_zero_not_nan():
    v = torch.randn(3, 4)
    m = torch.zeros(3, 4)
    assert masked_mean(v, m).item() == 0.0
    assert masked_mean(v, m, 0.0).item() == 0.0


def test_mask_broadcasts_against_values():
    v = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    sm = torch.tensor([[1.0], [0.0]])
    assert masked_mean(v, sm, 2).item() == pytest.approx(2.0, rel=1e-6)


def test_token_mean_is_masked_mean_with_global_valid_toks():
    v = torch.tensor([[1.0, 2.0]])
    m = torch.tensor([[1.0, 1.0]])
    assert token_mean(v, m, 4).item() == pytest.approx(0.75, rel=1e-6)


def test_sequence_mean_averages_rows_then_divides_by_global_valid_seqs():
    v = torch.tensor([[1.0, 3.0, 100.0], [2.0, 0.0, 0.0], [9.0, 9.0, 9.0]], dtype=torch.float64)
    tm = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    sm = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    # Row means 2 and 2; the empty third row contributes 0 but still counts in GS = 3.
    got = sequence_mean(v, tm, sm, global_valid_seqs=3)
    assert got.item() == pytest.approx((2.0 + 2.0 + 0.0) / 3, rel=1e-7)
    # A row dropped by sample_mask contributes nothing.
    sm2 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    assert sequence_mean(v, tm, sm2, global_valid_seqs=1).item() == pytest.approx(2.0, rel=1e-7)


def test_masked_mean_rejects_non_tensors():
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        masked_mean([1.0], torch.ones(1))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        masked_mean(torch.ones(1), [1.0])


def test_masked_mean_rejects_integer_values():
    with pytest.raises(TypeError, match="values must be a floating tensor"):
        masked_mean(torch.ones(2, dtype=torch.int64), torch.ones(2))


def test_masked_mean_rejects_a_mask_that_does_not_broadcast():
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not broadcast"):
        masked_mean(torch.ones(2, 2), torch.ones(3))


def test_masked_mean_rejects_a_bad_global_factor():
    with pytest.raises(ValueError, match="global_normalization_factor must hold a single number"):
        masked_mean(torch.ones(2), torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match="global_normalization_factor must be a number"):
        masked_mean(torch.ones(2), torch.ones(2), "4")
    with pytest.raises(TypeError, match="got bool"):
        masked_mean(torch.ones(2), torch.ones(2), True)


def test_sequence_mean_rejects_mismatched_masks():
    with pytest.raises(ValueError, match=r"token_mask must be \[B, T\]"):
        sequence_mean(torch.ones(3), torch.ones(3), torch.ones(1), 1)
    with pytest.raises(ValueError, match=r"sample_mask must be \[B\] = \(2,\), got shape \(3,\)"):
        sequence_mean(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3), 1)
