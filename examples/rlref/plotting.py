"""Shared figure helpers for the notebooks: smoothing, seed bands and History curves.

Every helper draws on a Matplotlib ``Axes`` the caller owns, returns what it computed (so a
notebook can assert on it), and never calls ``plt.show()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["smooth", "seed_band", "plot_seed_band", "plot_history", "stack_series"]


def smooth(values, window: int = 5) -> np.ndarray:
    """Trailing moving average over ``window`` steps, ignoring NaN; same length as ``values``.

    ``out[i] = nanmean(values[max(0, i - window + 1) : i + 1])`` (NaN where that window is all NaN),
    so the first points average fewer steps and no future step leaks into a point.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    finite = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, x.size + 1)
    lo = np.maximum(hi - window, 0)
    count = ccount[hi] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (csum[hi] - csum[lo]) / count
    out[count == 0] = np.nan
    return out


def stack_series(histories: Sequence | Mapping, key: str) -> np.ndarray:
    """``[n_seeds, n_steps]`` array of ``history.series(key)``; shorter runs are NaN-padded."""
    runs = list(histories.values()) if isinstance(histories, Mapping) else list(histories)
    if not runs:
        raise ValueError("need at least one history")
    rows = [np.asarray(h.series(key) if hasattr(h, "series") else h, dtype=float) for h in runs]
    n = max(r.size for r in rows)
    out = np.full((len(rows), n), np.nan)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def seed_band(matrix, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step mean and Student-t confidence band over seeds (rows) of ``matrix [n_seeds, n_steps]``.

    ``mean +/- t_{(1+level)/2, n-1} * sd / sqrt(n)`` with the sample sd (n-1) of the ``n`` seeds that
    have a finite value at that step; the band collapses to the mean where ``n < 2``.
    """
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"matrix must be [n_seeds, n_steps], got shape {m.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    n = np.isfinite(m).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps: mean is NaN by design
        mean = np.nanmean(m, axis=0)
        sd = np.where(n >= 2, np.nanstd(m, axis=0, ddof=1), 0.0)
        tq = np.where(n >= 2, _st.t.ppf((1 + level) / 2, np.maximum(n - 1, 1)), 0.0)
        half = tq * sd / np.sqrt(np.maximum(n, 1))
    return mean, mean - half, mean + half


def plot_seed_band(ax, histories_by_seed, key: str, label: str | None = None, color=None,
                   window: int = 1, level: float = 0.95):
    """Draw the mean over seeds of ``key`` against step, with a shaded ``level`` confidence band.

    ``histories_by_seed``: a list or ``{seed: History}`` (or of 1-D arrays). ``window > 1`` smooths
    each seed's curve with :func:`smooth` first. Returns ``(mean, lower, upper)`` arrays.
    """
    mat = stack_series(histories_by_seed, key)
    if window > 1:
        mat = np.stack([smooth(row, window) for row in mat])
    mean, lo, hi = seed_band(mat, level)
    steps = np.arange(mean.size)
    n = mat.shape[0]
    text = f"{label or key} (n={n} seeds)"
    (line,) = ax.plot(steps, mean, label=text, color=color)
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    return mean, lo, hi


def plot_history(ax, history, keys: str | Sequence[str], window: int = 1,
                 labels: Sequence[str] | None = None):
    """Plot one run's ``keys`` against step (optionally smoothed); returns the plotted arrays."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    if labels is not None and len(labels) != len(keys):
        raise ValueError(f"got {len(labels)} labels for {len(keys)} keys")
    out = {}
    for i, key in enumerate(keys):
        y = history.series(key)
        if window > 1:
            y = smooth(y, window)
        ax.plot(np.arange(y.size), y, label=labels[i] if labels else key)
        out[key] = y
    ax.set_xlabel("step")
    if len(keys) == 1:
        ax.set_ylabel(keys[0])
    return out
