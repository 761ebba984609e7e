"""Tests of the paper's CMR distance and the grid fits (cmrjax.fit).

Expected values come from: hand computation, an independent brute-force float64 loop written here (the
paper's procedure, step by step), the original study's saved results (top_cmr_heads_pythia.json, made by
the original code), and the issue's statement of the paper's GPT-2 results.
"""

from __future__ import annotations

import json
import warnings

import jax
import numpy as np
import pytest

from cmrjax.fit import HeadFits, align_to_profile, cmr_distance, fit_profiles, fit_scores
from cmrjax.io import CRPGrid, Scores, load_crp_grid, load_scores


@pytest.fixture(scope="module")
def grid(ref_dir) -> CRPGrid:
    return load_crp_grid(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")


@pytest.fixture(scope="module")
def gpt2(ref_dir) -> Scores:
    return load_scores(ref_dir / "scores" / "gpt2-small.npz")


def brute_force(profiles: np.ndarray, crp: np.ndarray):
    """The paper's procedure, literally: for each head, loop-free over points but nothing shared with cmrjax.

    profiles (N, 16) lags -8..+7; crp (P, 17) lags -8..+8. Returns (argmin (N,), min distance (N,), scale (N,)).
    """
    p = profiles[:, 3:14]                       # lags -5..+5
    p = p - p.min(axis=1, keepdims=True)
    c = crp[:, 3:14] / crp[:, 3:14].sum(axis=1, keepdims=True)
    c = c - c.min(axis=1, keepdims=True)
    best_i, best_d, best_s = [], [], []
    for row in p:
        s = row.max() / c.max(axis=1)
        d = np.mean((row[None, :] - c * s[:, None]) ** 2, axis=1) / np.var(row)
        i = int(np.argmin(d))                    # first occurrence, like the original's strict "<" loop
        best_i.append(i)
        best_d.append(d[i])
        best_s.append(s[i])
    return np.array(best_i), np.array(best_d), np.array(best_s)


def _flat_index(fits: HeadFits, grid: CRPGrid) -> np.ndarray:
    shape = (len(grid.beta_enc), len(grid.beta_rec), len(grid.gamma_ft))
    return np.ravel_multi_index(tuple(fits.index_grid.reshape(-1, 3).T), shape)


# ---------------------------------------------------------------------------------------------------
# the distance itself


def test_distance_of_a_hand_made_pair():
    """Given a 3-lag window (window=1), the distance is worked out by hand.

    profile on lags -1..1 = (1, 3, 2) -> shifted p = (0, 2, 1), Var(p) = 2/3.
    crp on lags -1..1 = (0.2, 0.6, 0.2) -> renormalised the same, shifted q = (0, 0.4, 0), scale = 2/0.4 = 5,
    scaled (0, 2, 0); squared differences (0, 0, 1), mean 1/3; distance = (1/3) / (2/3) = 0.5.
    """
    profile = np.array([1.0, 3.0, 2.0])
    crp = np.array([0.2, 0.6, 0.2])
    lags = np.arange(-1, 2)
    d = cmr_distance(profile, crp, profile_lags=lags, crp_lags=lags, window=1)
    assert d == pytest.approx(0.5, rel=1e-14)
    _, p, q, s = align_to_profile(profile, crp, profile_lags=lags, crp_lags=lags, window=1)
    np.testing.assert_allclose(p, [0, 2, 1])
    np.testing.assert_allclose(q, [0, 2, 0], atol=1e-14)
    assert s == pytest.approx(5.0)


def test_distance_is_zero_for_an_affine_image_of_the_crp():
    """Given scores = 7 * CRP + 3 (any positive scale and offset), the min-max distance is 0."""
    crp = np.exp(-0.4 * np.abs(np.arange(-8, 9)))
    crp /= crp.sum()
    assert cmr_distance(7 * crp[:16] + 3, crp) == pytest.approx(0.0, abs=1e-20)


def test_distance_uses_population_variance_as_the_original(ref_dir, grid):
    """The original's saved MSE and scale factors (top_cmr_heads_pythia.json) are reproduced to 1e-12.

    Every Pythia-70m/410m entry of the top-200 list is compared with the final checkpoint (cp142) at its
    saved grid parameters; the saved values were made by the original code, so this pins ddof=0.
    """
    top = json.load(open(ref_dir / "top_cmr_heads_pythia.json"))["top200"]
    n = 0
    for label, mse, params, scale in zip(top["labels"], top["MSE"], top["params"], top["scale_factors"]):
        model, head = label.rsplit("-", 1)
        if model not in ("pythia-70m-deduped-v0", "pythia-410m-deduped-v0"):
            continue
        s = load_scores(ref_dir / "scores" / f"{model}__cp142.npz")
        layer, h = map(int, head[1:].split("H"))
        i, j, k = round(params[0] * 20) - 1, round(params[1] * 20), round(params[2] * 10)
        _, _, _, sc = align_to_profile(s.crp_scores[layer, h], grid.crp[i, j, k])
        assert cmr_distance(s.crp_scores[layer, h], grid.crp[i, j, k]) == pytest.approx(mse, rel=1e-12)
        assert sc == pytest.approx(scale, rel=1e-12)
        n += 1
    assert n >= 20


def test_grid_fit_finds_the_originals_saved_best_points(ref_dir, grid):
    """The grid fit of pythia cp142 files gives the original's params, distance and scale for its top heads."""
    top = json.load(open(ref_dir / "top_cmr_heads_pythia.json"))["top200"]
    fits = {}
    for m in ("pythia-70m-deduped-v0", "pythia-410m-deduped-v0"):
        fits[m] = fit_scores(load_scores(ref_dir / "scores" / f"{m}__cp142.npz"), grid)
    for label, mse, params, scale in zip(top["labels"], top["MSE"], top["params"], top["scale_factors"]):
        model, head = label.rsplit("-", 1)
        if model not in fits:
            continue
        layer, h = map(int, head[1:].split("H"))
        f = fits[model]
        np.testing.assert_allclose(f.params_grid[layer, h], params, atol=1e-12)
        assert f.distance_grid[layer, h] == pytest.approx(mse, rel=1e-5)
        assert f.scale_grid[layer, h] == pytest.approx(scale, rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# grid fits against the brute-force loop


def test_gpt2_closest_heads_and_cmr_like_count(gpt2, grid):
    """The issue states the paper's GPT-2 small results: these 14 closest heads, and 68/144 with d < 0.5."""
    f = fit_scores(gpt2, grid)
    d = f.distance_grid.ravel()
    closest = set(f.labels.ravel()[np.argsort(d)[:14]])
    assert closest == {"L1H11", "L5H5", "L5H1", "L3H0", "L5H8", "L8H6", "L0H5", "L5H0", "L0H1", "L6H9",
                       "L0H10", "L6H10", "L7H2", "L8H3"}
    assert int(np.sum(d < 0.5)) == 68


def test_grid_fit_matches_brute_force_on_every_reference_file(ref_dir, grid):
    """All reference score files fitted in one call (float32): argmin exactly, distance to 1e-5 relative."""
    files = sorted((ref_dir / "scores").glob("*.npz"))
    scores = [load_scores(p) for p in files]
    fits = fit_scores(scores, grid)
    crp = grid.crp.reshape(-1, grid.crp.shape[-1])
    for s, f in zip(scores, fits):
        i, d, sc = brute_force(s.crp_scores.reshape(-1, 16), crp)
        np.testing.assert_array_equal(_flat_index(f, grid), i, err_msg=s.name)
        np.testing.assert_allclose(f.distance_grid.ravel(), d, rtol=1e-5, err_msg=s.name)
        np.testing.assert_allclose(f.scale_grid.ravel(), sc, rtol=1e-5, err_msg=s.name)
        np.testing.assert_allclose(f.params_grid.reshape(-1, 3), grid.points[i], err_msg=s.name)


def test_grid_fit_without_refinement_is_float32_close(gpt2, grid):
    """Without the float64 re-ranking the float32 kernel alone is still within 1e-5 of the brute force."""
    f = fit_scores(gpt2, grid, refine=False)
    _, d, _ = brute_force(gpt2.crp_scores.reshape(-1, 16), grid.crp.reshape(-1, 17))
    np.testing.assert_allclose(f.distance_grid.ravel(), d, rtol=1e-5)


def test_grid_fit_in_float64_matches_to_1e9(ref_dir, grid):
    """With jax x64 on (and no re-ranking), distances match the float64 brute force to 1e-9."""
    scores = [load_scores(ref_dir / "scores" / n) for n in ("gpt2-small.npz", "pythia-70m-deduped-v0__cp000.npz")]
    with jax.enable_x64(True):
        fits = fit_scores(scores, grid, refine=False)
    for s, f in zip(scores, fits):
        i, d, _ = brute_force(s.crp_scores.reshape(-1, 16), grid.crp.reshape(-1, 17))
        np.testing.assert_array_equal(_flat_index(f, grid), i)
        np.testing.assert_allclose(f.distance_grid.ravel(), d, rtol=1e-9)
        assert f.metadata["dtype"] == "float64"


def test_results_do_not_depend_on_chunk_size(gpt2, grid):
    a = fit_scores(gpt2, grid, chunk_size=16)
    b = fit_scores(gpt2, grid, chunk_size=256)
    np.testing.assert_array_equal(a.index_grid, b.index_grid)
    np.testing.assert_array_equal(a.distance_grid, b.distance_grid)


def test_several_files_in_one_call_equal_separate_calls(ref_dir, grid):
    s1 = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp000.npz")
    s2 = load_scores(ref_dir / "scores" / "gpt2-small.npz")
    both = fit_scores([s1, s2], grid)
    for s, f in zip([s1, s2], both):
        alone = fit_scores(s, grid)
        assert f.labels.shape == s.labels.shape
        np.testing.assert_array_equal(f.index_grid, alone.index_grid)
        np.testing.assert_allclose(f.distance_grid, alone.distance_grid, rtol=1e-12)


def test_fitted_curves_are_what_the_distance_compares(gpt2, grid):
    """profile_fit and crp_fit_grid reproduce distance_grid: mean((p - q)^2) / Var(p)."""
    f = fit_scores(gpt2, grid)
    d = np.mean((f.profile_fit - f.crp_fit_grid) ** 2, -1) / np.var(f.profile_fit, -1)
    np.testing.assert_allclose(d, f.distance_grid, rtol=1e-10)
    np.testing.assert_array_equal(f.lags_fit, np.arange(-5, 6))


# ---------------------------------------------------------------------------------------------------
# the softmax link


def test_softmax_link_recovers_a_log_linear_head(grid):
    """Given scores = 2.5 * log CRP + 1 at a grid point, the softmax fit finds it with distance 0, slope 2.5."""
    c = grid.crp[9, 14, 4]                     # beta_enc 0.5, beta_rec 0.7, gamma_ft 0.4
    w = c[3:14] / c[3:14].sum()
    prof = np.zeros(16)
    prof[3:14] = 2.5 * np.log(w) + 1.0
    out = fit_profiles(prof[None, :], grid, link="softmax")
    assert out["distance_grid"][0] == pytest.approx(0.0, abs=1e-12)
    assert out["scale_grid"][0] == pytest.approx(2.5, rel=1e-9)
    np.testing.assert_allclose(out["params_grid"][0], [0.5, 0.7, 0.4], atol=1e-12)


def test_softmax_distance_is_one_minus_r_squared_by_hand():
    """Window 1: y = (0, 1, 3), x = log(c) with c = (1/4, 1/4, 1/2) renormalised; least squares by hand."""
    lags = np.arange(-1, 2)
    y = np.array([0.0, 1.0, 3.0])
    c = np.array([0.25, 0.25, 0.5])
    x = np.log(c)
    r = np.corrcoef(x, y)[0, 1]
    d = cmr_distance(y, c, profile_lags=lags, crp_lags=lags, window=1, link="softmax")
    assert d == pytest.approx(1 - r ** 2, rel=1e-12)


# ---------------------------------------------------------------------------------------------------
# bad input


def test_nan_head_gets_nan_and_a_warning_naming_it(gpt2, grid):
    crp = gpt2.crp_scores.copy()
    crp[2, 3, 5] = np.nan
    crp[4, 0, 0] = np.inf
    bad = Scores(crp_scores=crp, crp_scores_sem=gpt2.crp_scores_sem, head_scores=gpt2.head_scores,
                 copying_score=gpt2.copying_score, labels=gpt2.labels)
    with pytest.warns(RuntimeWarning, match=r"L2H3.*L4H0|L4H0.*L2H3"):
        f = fit_scores(bad, grid, method="both", steps=5)
    clean = fit_scores(gpt2, grid)
    for arr in (f.distance_grid, f.scale_grid, f.distance):
        assert np.isnan(arr[2, 3]) and np.isnan(arr[4, 0])
    assert np.all(np.isnan(f.params_grid[2, 3])) and np.all(f.index_grid[2, 3] == -1)
    assert not f.converged[2, 3]
    mask = np.ones((12, 12), bool)
    mask[2, 3] = mask[4, 0] = False
    np.testing.assert_array_equal(f.distance_grid[mask], clean.distance_grid[mask])


def test_window_larger_than_the_profile_lags_is_a_clear_error(gpt2, grid):
    with pytest.raises(ValueError, match="window"):
        fit_scores(gpt2, grid, window=9)


def test_wrong_lag_count_is_a_clear_error(grid):
    with pytest.raises(ValueError, match="lag"):
        fit_profiles(np.zeros((3, 12)), grid)


@pytest.mark.parametrize("bad", [dict(method="newton"), dict(link="probit"), dict(window=0), dict(n_starts=0)])
def test_bad_options_are_clear_errors(gpt2, grid, bad):
    with pytest.raises(ValueError):
        fit_scores(gpt2, grid, **bad)
