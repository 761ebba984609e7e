"""Baseline lag kernels: hand-computed kernel values, recovery of known kernels, and the criteria."""

from __future__ import annotations

import numpy as np
import pytest

from cmrjax import baselines as B
from cmrjax.io import Scores, head_labels

SCORE_LAGS = np.arange(-8, 8)


def _scores(profiles: np.ndarray) -> Scores:
    """(N, 16) profiles over lags -8..+7 as a 1-layer Scores."""
    N = len(profiles)
    z = np.zeros((1, N))
    return Scores(crp_scores=profiles[None], crp_scores_sem=np.zeros((1, N, 16)), head_scores=z,
                  copying_score=z, labels=head_labels(1, N))


def test_kernels_match_hand_values():
    """Given c=0, r_back=0.5, r_fwd=0.25: lags -2..2 give 0.25, 0.5, 1, 0.25, 0.0625 (by hand)."""
    k = B.asym_exp_kernel(np.arange(-2, 3), 0.0, 0.5, 0.25)
    np.testing.assert_allclose(k, [0.25, 0.5, 1.0, 0.25, 0.0625])
    # r = 0 keeps only the centre on that side (0**0 = 1)
    np.testing.assert_allclose(B.asym_exp_kernel(np.arange(-1, 2), 0.0, 0.0, 0.5), [0.0, 1.0, 0.5])
    g = B.gaussian_kernel(np.array([1.0, 2.0, 3.0]), 1.0, 1.0)
    np.testing.assert_allclose(g, [1.0, np.exp(-0.5), np.exp(-2.0)])


def test_information_criteria_by_hand():
    """distance 0.5 x Var 2 = MSE 1, log 1 = 0: AIC = 2k, BIC = k log n."""
    aic, bic = B.information_criteria(np.array([0.5]), np.array([2.0]), n_params=3, n_lags=11)
    np.testing.assert_allclose(aic, [6.0])
    np.testing.assert_allclose(bic, [3 * np.log(11)])


@pytest.mark.parametrize("kernel,true", [("gaussian", (1.0, 1.5)), ("gaussian", (-2.5, 0.75)),
                                         ("asym_exp", (1.0, 0.5, 0.7)), ("asym_exp", (0.0, 0.3, 0.85))])
def test_grid_fit_recovers_a_known_kernel(kernel, true):
    """Given a profile 3 * kernel(theta) + 7 with theta on the kernel grid, the fit engine returns theta
    with distance ~0 (the min-max distance ignores offset and scale)."""
    from cmrjax.fit import fit_scores

    f = B.gaussian_kernel if kernel == "gaussian" else B.asym_exp_kernel
    prof = 3.0 * f(SCORE_LAGS, *true) + 7.0
    fits = fit_scores(_scores(prof[None]), B.kernel_grid(kernel))
    got = fits.params_grid[0, 0, : len(true)]
    np.testing.assert_allclose(got, true, atol=1e-9)
    assert fits.distance_grid[0, 0] < 1e-10


def test_model_comparison_picks_the_generating_kernel():
    """Given noisy profiles from each kernel, AIC prefers the kernel that generated each profile."""
    from cmrjax.fit import fit_scores

    rng = np.random.default_rng(0)
    gauss = 5 * B.gaussian_kernel(SCORE_LAGS, np.array([0.5, 1.0, 2.0]), np.array([1.25, 2.0, 3.0]))
    asym = 5 * B.asym_exp_kernel(SCORE_LAGS, np.array([1.0, 1.0, 0.0]), np.array([0.3, 0.5, 0.2]),
                                 np.array([0.6, 0.8, 0.7]))
    prof = np.concatenate([gauss, asym]) + rng.normal(0, 0.02, (6, 16))
    s = _scores(prof)
    fits = {k: fit_scores(s, B.kernel_grid(k)) for k in B.KERNELS}
    comp = B.compare_models(fits)
    assert comp.best_aic[0].tolist() == ["gaussian"] * 3 + ["asym_exp"] * 3
    assert comp.best_bic[0].tolist() == ["gaussian"] * 3 + ["asym_exp"] * 3


def test_fit_baselines_on_reference_heads(ref_dir):
    """CMR, Gaussian and asym-exp are fitted to all 144 GPT-2 heads; CMR's grid fit is the paper's."""
    from cmrjax.io import load_crp_grid, load_scores

    s = load_scores(ref_dir / "scores" / "gpt2-small.npz")
    g = load_crp_grid(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")
    comp = B.fit_baselines(s, g)
    assert set(comp.distance) == {"CMR", "gaussian", "asym_exp"}
    assert int(np.sum(comp.distance["CMR"] < 0.5)) == 68  # paper
    for k in comp.aic:
        assert comp.aic[k].shape == (12, 12)
        assert np.all(np.isfinite(comp.aic[k]))
    assert set(np.unique(comp.best_aic)) <= {"CMR", "gaussian", "asym_exp"}


def test_kernel_grid_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="not one of"):
        B.kernel_grid("triangle")
