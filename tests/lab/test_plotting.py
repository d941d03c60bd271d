"""rlref.plotting: smoothing and seed bands on hand-computed values."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rlref.lab import History  # noqa: E402
from rlref.plotting import plot_history, plot_seed_band, seed_band, smooth, stack_series  # noqa: E402


def test_smooth_is_a_trailing_nan_aware_mean():
    out = smooth([1.0, 3.0, np.nan, 5.0, 7.0], window=2)
    assert out.tolist() == [1.0, 2.0, 3.0, 5.0, 6.0]
    assert np.isnan(smooth([np.nan, 1.0], 1)[0])
    with pytest.raises(ValueError, match="window"):
        smooth([1.0], 0)
    with pytest.raises(ValueError, match="1-D"):
        smooth([[1.0]], 2)


def test_seed_band_matches_the_t_interval_by_hand():
    mean, lo, hi = seed_band([[1.0, 2.0], [3.0, 2.0], [5.0, np.nan]])
    # step 0: mean 3, sd 2, n 3, t(0.975, 2) = 4.302653 -> half width 4.302653 * 2 / sqrt(3)
    assert mean[0] == 3.0 and hi[0] - mean[0] == pytest.approx(4.302653 * 2 / np.sqrt(3), rel=1e-6)
    # step 1: two equal values -> zero width
    assert mean[1] == 2.0 and lo[1] == hi[1] == 2.0
    mean, lo, hi = seed_band([[1.0, 2.0]])  # one seed: no band
    assert np.array_equal(lo, mean) and np.array_equal(hi, mean)
    with pytest.raises(ValueError, match="level"):
        seed_band([[1.0]], level=1.5)


def test_plot_helpers_draw_and_return_their_numbers():
    runs = {s: History([{"r": float(s + i)} for i in range(4 + s)]) for s in range(3)}
    mat = stack_series(runs, "r")
    assert mat.shape == (3, 6) and np.isnan(mat[0, 5])
    fig, ax = plt.subplots()
    mean, lo, hi = plot_seed_band(ax, runs, "r", label="reward")
    assert mean.tolist()[:2] == [1.0, 2.0] and len(ax.lines) == 1 and "n=3 seeds" in ax.lines[0].get_label()
    out = plot_history(ax, runs[0], ["r"], window=2)
    assert out["r"].tolist() == [0.0, 0.5, 1.5, 2.5]
    plt.close(fig)
