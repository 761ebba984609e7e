"""Smoke tests of cmrjax.plot on synthetic result arrays: every figure renders to a non-empty PNG."""

from __future__ import annotations

import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    L, H, K = 3, 4, 11
    lags = np.arange(-5, 6)
    prof = np.abs(rng.normal(size=(L, H, K)))
    prof -= prof.min(-1, keepdims=True)
    return dict(L=L, H=H, lags=lags, prof=prof, fit=prof * 0.9, dist=rng.uniform(0.01, 2, (L, H)),
                params=rng.uniform(0, 1, (L, H, 3)), scale=rng.uniform(1, 50, (L, H)),
                labels=np.array([[f"L{l}H{h}" for h in range(H)] for l in range(L)]),
                match=rng.uniform(0, 1, (L, H)), copy=rng.uniform(-1, 1, (L, H)))


def _figures(a):
    from cmrjax import plot

    steps = np.arange(0, 150, 10)
    q = np.linspace(0, 1, len(steps))
    yield "profiles", plot.head_profiles_by_layer(a["lags"], a["prof"], a["fit"], a["dist"])
    yield "closest", plot.closest_heads(a["labels"], a["lags"], a["prof"], a["fit"], a["dist"], a["params"],
                                        a["scale"], k=5, sem=0.1 * a["prof"])
    yield "scatter", plot.matching_vs_distance(a["match"], a["dist"], a["copy"])
    yield "hist", plot.distance_histogram(a["dist"])
    yield "layers", plot.percent_by_layer({"m1": (np.linspace(0, 1, 3), [10, 50, 90]),
                                           "m2": (np.linspace(0, 1, 5), [0, 20, 40, 60, 80])})
    yield "heat", plot.training_heatmap(steps, np.outer(q, [10, 50, 90]))
    yield "train", plot.values_over_training(steps, {"beta_enc": (q, q - 0.1, q + 0.1)}, logy=False)
    grp = {"top-5 CMR": dict(distance=a["dist"].ravel()[:5], params=a["params"].reshape(-1, 3)[:5],
                             scale=a["scale"].ravel()[:5])}
    yield "top", plot.top_heads_summary(grp)
    yield "plane", plot.param_plane({"heads": a["params"].reshape(-1, 3)}, {"human": (0.7, 0.9)})
    rng = np.random.default_rng(1)
    yield "ablation", plot.ablation_scores(rng.normal(-2, 1, 50), rng.normal(-1, 1, 50), rng.normal(-2, 1, (10, 50)))
    yield "baselines", plot.baseline_comparison({"CMR": rng.normal(0, 1, 30), "gaussian": rng.normal(1, 1, 30)},
                                                {"CMR": rng.uniform(0.01, 1, 30), "gaussian": rng.uniform(0.01, 1, 30)})


def test_every_figure_writes_nonempty_png_and_pdf(arrays, tmp_path):
    from cmrjax.plot import save_figure

    for name, fig in _figures(arrays):
        paths = save_figure(fig, tmp_path, name)
        assert [p.suffix for p in paths] == [".png", ".pdf"]
        for p in paths:
            assert p.stat().st_size > 1000, name
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_tolerate_nan_heads(arrays, tmp_path):
    from cmrjax import plot

    d = arrays["dist"].copy()
    d[0, 0] = np.nan
    plot.save_figure(plot.head_profiles_by_layer(arrays["lags"], arrays["prof"], arrays["fit"], d), tmp_path, "nan")
    plot.save_figure(plot.matching_vs_distance(arrays["match"], d, arrays["copy"]), tmp_path, "nan2")


def test_save_figure_into_missing_folder_raises(arrays, tmp_path):
    from cmrjax import plot

    fig = plot.distance_histogram(arrays["dist"])
    with pytest.raises(OSError, match="does not exist"):
        plot.save_figure(fig, tmp_path / "missing", "x")


def test_importing_cmrjax_plot_does_not_import_matplotlib():
    """plot.py imports matplotlib only when a figure is drawn, so `import cmrjax` stays light."""
    import subprocess

    code = "import cmrjax, cmrjax.plot, cmrjax.baselines, cmrjax.cli_experiments, sys; " \
           "print('matplotlib' in sys.modules, 'torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "False"], r.stderr
