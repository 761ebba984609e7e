"""Figures of the paper's analyses, drawn from result arrays only (no fitting, no statistics here).

Every function takes plain arrays (as stored in score, fit and experiment files) and returns a
``matplotlib.figure.Figure``; :func:`save_figure` writes it as PNG and PDF. Figures are built on the
object-oriented API with the Agg canvas (no pyplot state, no display needed), and matplotlib is imported
only when a figure is drawn, so ``import cmrjax`` stays light.

Figure map (Ji-An, Zhou, Benna & Mattar, NeurIPS 2024):

==============================  =====================================================================
function                        paper figure
==============================  =====================================================================
:func:`head_profiles_by_layer`  Fig. 5: head attention by lag with fitted CMR curves, per layer
:func:`closest_heads`           Fig. 5 (examples): the most CMR-like heads, one panel each
:func:`matching_vs_distance`    Fig. 6a: induction matching score vs CMR distance, copying-score sign
:func:`distance_histogram`      Fig. 6a (inset): distribution of CMR distances
:func:`percent_by_layer`        Fig. 6b, c / 7b: percent of CMR-like heads by relative layer position
:func:`training_heatmap`        Fig. 7b / S2: percent of CMR-like heads by layer over training
:func:`values_over_training`    Fig. S4: fitted parameters / inverse temperature over training
:func:`top_heads_summary`       Fig. 7c-f: distance, parameters, inverse temperature of top-N heads
:func:`param_plane`             Fig. 7g: (beta_enc, beta_rec) of heads beside human CMR fits
:func:`ablation_scores`         Fig. 8: ICL score intact / CMR-like heads ablated / random heads ablated
:func:`baseline_comparison`     (new) CMR vs Gaussian vs asymmetric-exponential lag kernels
==============================  =====================================================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

# Colours used throughout (colour-blind safe, Okabe-Ito).
POSITIVE = "#D55E00"  # copying score > 0
NEGATIVE = "#0072B2"  # copying score <= 0
CMR_COLOUR = "#009E73"
GREY = "#7f7f7f"
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]


def _figure(width: float, height: float):
    """A new Figure on the Agg canvas (imports matplotlib lazily)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_dir: str | os.PathLike, stem: str, formats: Sequence[str] = ("png", "pdf"),
                dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``out_dir/stem.png`` and ``.pdf``; returns the paths written.

    Raises:
      OSError: ``out_dir`` does not exist.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise OSError(f"figure folder {str(out)!r} does not exist; create it first")
    paths = []
    for fmt in formats:
        p = out / f"{stem}.{fmt}"
        fig.savefig(p, dpi=dpi)
        paths.append(p)
    return paths


def _grid_shape(n: int, max_cols: int = 6) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return int(np.ceil(n / cols)), cols


def _fmt_params(p: np.ndarray) -> str:
    return f"$\\beta_{{enc}}$={p[0]:.2f} $\\beta_{{rec}}$={p[1]:.2f} $\\gamma_{{FT}}$={p[2]:.2f}"


# --------------------------------------------------------------------------------------------------
# single heads (Fig. 5, 6a)


def head_profiles_by_layer(lags: np.ndarray, profiles: np.ndarray, fitted: np.ndarray, distance: np.ndarray,
                           *, threshold: float = 0.5, title: str = "", max_cols: int = 6):
    """Each head's lag profile (solid) with its fitted CMR curve (dashed), one panel per layer.

    Args:
      lags: (lags,) the window's lags (e.g. -5..+5).
      profiles: (layers, heads, lags) head profiles on the window, shifted to minimum 0
        (``HeadFits.profile_fit``).
      fitted: (layers, heads, lags) fitted CMR curves on the same scale (``HeadFits.crp_fit_grid``).
      distance: (layers, heads) CMR distance; heads below ``threshold`` are drawn in colour, the
        others in thin grey.
    """
    L, H, _ = profiles.shape
    rows, cols = _grid_shape(L, max_cols)
    fig = _figure(2.3 * cols, 1.9 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for layer in range(rows * cols):
        ax = axes.flat[layer]
        if layer >= L:
            ax.set_visible(False)
            continue
        n_like = 0
        for h in range(H):
            d = distance[layer, h]
            if not np.isfinite(d):
                continue
            if d < threshold:
                c = PALETTE[n_like % len(PALETTE)]
                n_like += 1
                ax.plot(lags, profiles[layer, h], "-", color=c, lw=1.2)
                ax.plot(lags, fitted[layer, h], "--", color=c, lw=1.0)
            else:
                ax.plot(lags, profiles[layer, h], "-", color=GREY, lw=0.5, alpha=0.5)
        ax.set_title(f"layer {layer}: {n_like}/{H} CMR-like", fontsize=8)
        ax.axvline(0, color="k", lw=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("lag", fontsize=8)
    fig.suptitle(title or "head attention by lag (solid) and fitted CMR (dashed); grey: distance >= "
                 f"{threshold}", fontsize=9)
    return fig


def closest_heads(labels: np.ndarray, lags: np.ndarray, profiles: np.ndarray, fitted: np.ndarray,
                  distance: np.ndarray, params: np.ndarray, scale: np.ndarray, *, k: int = 8,
                  sem: np.ndarray | None = None, title: str = ""):
    """The ``k`` heads with the smallest CMR distance, one panel each (paper Fig. 5 examples).

    Args:
      labels, distance, scale: (layers, heads); params: (layers, heads, 3);
      profiles, fitted: (layers, heads, lags) on the fit window; sem: optional (layers, heads, lags)
      error bars of the profile (already on the window's lags).
    """
    flat_d = np.where(np.isfinite(distance), distance, np.inf).ravel()
    order = np.argsort(flat_d, kind="stable")[:k]
    rows, cols = _grid_shape(len(order), 4)
    fig = _figure(2.8 * cols, 2.3 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False)
    P = profiles.reshape(-1, profiles.shape[-1])
    F = fitted.reshape(-1, fitted.shape[-1])
    S = None if sem is None else sem.reshape(-1, sem.shape[-1])
    for i, ax in enumerate(axes.flat):
        if i >= len(order):
            ax.set_visible(False)
            continue
        j = order[i]
        if S is not None:
            ax.errorbar(lags, P[j], yerr=S[j], fmt="o-", color="k", ms=3, lw=1, label="head")
        else:
            ax.plot(lags, P[j], "o-", color="k", ms=3, lw=1, label="head")
        ax.plot(lags, F[j], "--", color=CMR_COLOUR, lw=1.5, label="CMR")
        p = params.reshape(-1, 3)[j]
        ax.set_title(f"{labels.ravel()[j]}  d={flat_d[j]:.3f}\n{_fmt_params(p)}  "
                     f"$\\tau^{{-1}}$={scale.ravel()[j]:.2g}", fontsize=7)
        ax.axvline(0, color="k", lw=0.3)
        ax.set_xlabel("lag", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def matching_vs_distance(matching: np.ndarray, distance: np.ndarray, copying: np.ndarray, *,
                         threshold: float = 0.5, title: str = ""):
    """Induction-head matching score against CMR distance, coloured by the copying score's sign."""
    m, d, c = (np.asarray(a, dtype=float).ravel() for a in (matching, distance, copying))
    ok = np.isfinite(m) & np.isfinite(d)
    fig = _figure(4.2, 3.4)
    ax = fig.subplots()
    pos = ok & (c > 0)
    neg = ok & ~(c > 0)
    ax.scatter(d[neg], m[neg], s=14, color=NEGATIVE, alpha=0.8, label="copying score $\\leq$ 0")
    ax.scatter(d[pos], m[pos], s=14, color=POSITIVE, alpha=0.8, label="copying score > 0")
    ax.axvline(threshold, color="k", ls=":", lw=1)
    ax.set_xlabel("CMR distance")
    ax.set_ylabel("induction-head matching score")
    if np.any(ok) and np.nanmax(d[ok]) / max(np.nanmin(d[ok]), 1e-12) > 50:
        ax.set_xscale("log")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    return fig


def distance_histogram(distance: np.ndarray, *, threshold: float = 0.5, bins: int = 30, title: str = ""):
    """Histogram of CMR distances (log-spaced bins), with the CMR-like threshold marked."""
    d = np.asarray(distance, dtype=float).ravel()
    d = d[np.isfinite(d) & (d > 0)]
    fig = _figure(4.0, 3.0)
    ax = fig.subplots()
    if d.size:
        edges = np.logspace(np.log10(d.min()) - 0.05, np.log10(d.max()) + 0.05, bins + 1)
        ax.hist(d, bins=edges, color=GREY, edgecolor="white")
        ax.set_xscale("log")
    ax.axvline(threshold, color="k", ls=":", lw=1)
    n_like = int(np.sum(d < threshold))
    ax.set_xlabel("CMR distance")
    ax.set_ylabel("heads")
    ax.set_title(title or f"{n_like}/{d.size} heads with distance < {threshold}", fontsize=9)
    return fig


def percent_by_layer(curves: Mapping[str, tuple[ArrayLike, ArrayLike]], *, title: str = "",
                     xlabel: str = "relative layer position"):
    """Percent of CMR-like heads by (relative) layer position, one line per model.

    Args:
      curves: name -> (x, percent), x in [0, 1] (layer / (n_layers - 1)) or layer index.
    """
    fig = _figure(4.6, 3.4)
    ax = fig.subplots()
    for i, (name, (x, y)) in enumerate(curves.items()):
        ax.plot(x, y, "o-", ms=3, color=PALETTE[i % len(PALETTE)], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% CMR-like heads (distance < 0.5)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------------
# training (Fig. 7b, S2, S4)


def training_heatmap(steps: np.ndarray, percent: np.ndarray, *, title: str = ""):
    """Percent of CMR-like heads, layers (rows) by training checkpoint (columns).

    Args:
      steps: (checkpoints,) checkpoint labels (e.g. training step in thousands).
      percent: (checkpoints, layers).
    """
    fig = _figure(5.2, 3.2)
    ax = fig.subplots()
    im = ax.imshow(np.asarray(percent).T, origin="lower", aspect="auto", vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(steps)))
    ax.set_xticklabels([str(s) for s in steps], rotation=90, fontsize=6)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="% CMR-like heads")
    ax.set_title(title, fontsize=9)
    return fig


def values_over_training(steps: np.ndarray, series: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                         *, ylabel: str = "", title: str = "", logy: bool = False):
    """Median and interquartile band of a quantity over training, one line per series.

    Args:
      steps: (checkpoints,) x values.
      series: name -> (median, q25, q75), each (checkpoints,).
    """
    fig = _figure(4.4, 3.2)
    ax = fig.subplots()
    x = np.asarray(steps, dtype=float)
    for i, (name, (med, lo, hi)) in enumerate(series.items()):
        c = PALETTE[i % len(PALETTE)]
        ax.plot(x, med, "o-", ms=3, color=c, label=name)
        ax.fill_between(x, lo, hi, color=c, alpha=0.2, lw=0)
    ax.set_xlabel("training step (thousands)")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------------
# top heads (Fig. 7c-g)


def top_heads_summary(groups: Mapping[str, Mapping[str, np.ndarray]], *, title: str = "",
                      colors: Mapping[str, str] | None = None):
    """Box plots of distance, beta_enc, beta_rec, gamma_FT and inverse temperature per head group.

    Args:
      groups: name (e.g. ``"top-50 CMR"``) -> {"distance": (n,), "params": (n, 3), "scale": (n,)}.
      colors: optional name -> colour (e.g. one colour per family of groups).
    """
    names = list(groups)
    quantities = [("distance", "CMR distance", True), ("beta_enc", "$\\beta_{enc}$", False),
                  ("beta_rec", "$\\beta_{rec}$", False), ("gamma_ft", "$\\gamma_{FT}$", False),
                  ("scale", "inverse temperature", True)]
    fig = _figure(2.4 * len(quantities), 3.2)
    axes = fig.subplots(1, len(quantities))
    for ax, (key, label, log) in zip(axes, quantities):
        data = []
        for n in names:
            g = groups[n]
            v = g["params"][:, ["beta_enc", "beta_rec", "gamma_ft"].index(key)] if key in (
                "beta_enc", "beta_rec", "gamma_ft") else g[key]
            v = np.asarray(v, dtype=float)
            data.append(v[np.isfinite(v)])
        ax.boxplot(data, showfliers=False)
        for i, v in enumerate(data):
            jitter = (np.linspace(-0.15, 0.15, len(v)) if len(v) > 1 else np.zeros(len(v)))
            ax.scatter(np.full(len(v), i + 1) + jitter, v, s=4, alpha=0.4,
                       color=(colors or {}).get(names[i], PALETTE[i % len(PALETTE)]))
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=6)
        ax.set_ylabel(label, fontsize=8)
        if log:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def param_plane(groups: Mapping[str, np.ndarray], human: Mapping[str, tuple[float, float]] | None = None,
                *, title: str = ""):
    """(beta_enc, beta_rec) of head groups, with human CMR fits from the literature as stars.

    Args:
      groups: name -> (n, 3) fitted parameters (beta_enc, beta_rec, gamma_ft).
      human: citation -> (beta_enc, beta_rec).
    """
    fig = _figure(4.6, 4.0)
    ax = fig.subplots()
    rng = np.random.default_rng(0)  # display jitter only (grid values overlap)
    markers = ["o", "^", "s", "D"]
    for i, (name, p) in enumerate(groups.items()):
        p = np.asarray(p, dtype=float)
        jit = rng.uniform(-0.012, 0.012, size=(len(p), 2))
        ax.scatter(p[:, 0] + jit[:, 0], p[:, 1] + jit[:, 1], s=16, alpha=0.55, marker=markers[i % 4],
                   color=PALETTE[i % len(PALETTE)], edgecolor="none", label=name)
    for j, (name, (be, br)) in enumerate((human or {}).items()):
        ax.scatter([be], [br], marker="*", s=200, color="k", edgecolor="white", zorder=5,
                   label="human fits (literature)" if j == 0 else None)
        ax.annotate(name, (be, br), xytext=(-4, -9), textcoords="offset points", fontsize=6, ha="right")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(-0.02, 1.12)
    ax.set_xlabel("$\\beta_{enc}$")
    ax.set_ylabel("$\\beta_{rec}$")
    ax.legend(fontsize=7, frameon=True, framealpha=0.9, loc="upper left", ncol=3,
              bbox_to_anchor=(0.0, 1.0), handletextpad=0.2, columnspacing=0.8)
    ax.set_title(title or "heads (dots) and human free-recall fits (stars)", fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------------
# ablation (Fig. 8) and baselines


def ablation_scores(intact: np.ndarray, ablated: np.ndarray, random: np.ndarray, *, title: str = "",
                    labels: tuple[str, str, str] = ("intact", "top CMR-like\nheads ablated",
                                                    "random heads\nablated")):
    """ICL score under three conditions: mean with 95% CI bars, and the paired differences.

    Args:
      intact, ablated: (prompts,) ICL score per prompt (loss late - loss early; more negative = more ICL).
      random: (prompts,) or (draws, prompts): one row per random head set.
    """
    intact = np.asarray(intact, float)
    ablated = np.asarray(ablated, float)
    random = np.atleast_2d(np.asarray(random, float))
    rand_mean = random.mean(axis=0)  # per prompt, averaged over draws
    fig = _figure(7.2, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    cols = [GREY, POSITIVE, NEGATIVE]
    for i, v in enumerate([intact, ablated, rand_mean]):
        m = v.mean()
        ci = 1.96 * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
        ax1.bar(i, m, color=cols[i], yerr=ci, capsize=4)
    if random.shape[0] > 1:
        draw_means = random.mean(axis=1)
        ax1.scatter(np.full(len(draw_means), 2) + np.linspace(-0.25, 0.25, len(draw_means)), draw_means,
                    s=6, color="k", zorder=5, label="each random draw")
        ax1.legend(fontsize=7, frameon=False)
    ax1.axhline(0, color="k", lw=0.5)
    ax1.set_xticks(range(3))
    ax1.set_xticklabels(labels, fontsize=7)
    ax1.set_ylabel("ICL score (loss late - loss early)")
    diffs = [ablated - intact, rand_mean - intact]
    ax2.violinplot([d[np.isfinite(d)] for d in diffs], showmedians=True)
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xticks([1, 2])
    ax2.set_xticklabels(["CMR-like ablated\n- intact", "random ablated\n- intact"], fontsize=7)
    ax2.set_ylabel("paired difference per prompt")
    fig.suptitle(title, fontsize=9)
    return fig


def baseline_comparison(criterion: Mapping[str, np.ndarray], distance: Mapping[str, np.ndarray], *,
                        criterion_name: str = "AIC", reference: str = "CMR", title: str = ""):
    """Per-head model comparison: distance per model, and criterion differences against ``reference``.

    Args:
      criterion: model name -> (heads,) criterion values (lower is better).
      distance: model name -> (heads,) min-max distances.
    """
    names = list(criterion)
    fig = _figure(7.6, 3.2)
    ax1, ax2 = fig.subplots(1, 2)
    data = [np.asarray(distance[n], float) for n in names]
    ax1.boxplot([d[np.isfinite(d)] for d in data], showfliers=False)
    ax1.set_xticks(range(1, len(names) + 1))
    ax1.set_xticklabels(names, fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("min-max distance")
    others = [n for n in names if n != reference]
    ref = np.asarray(criterion[reference], float)
    for i, n in enumerate(others):
        delta = np.asarray(criterion[n], float) - ref
        delta = delta[np.isfinite(delta)]
        ax2.hist(delta, bins=30, alpha=0.6, color=PALETTE[(i + 1) % len(PALETTE)],
                 label=f"{n} - {reference}: {np.mean(delta > 0) * 100:.0f}% favour {reference}")
    ax2.axvline(0, color="k", lw=0.5)
    ax2.set_xlabel(f"$\\Delta${criterion_name} (> 0: {reference} better)")
    ax2.set_ylabel("heads")
    ax2.legend(fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    return fig
