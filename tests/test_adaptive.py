"""Per-point trial counts (cmrjax.adaptive): moment bookkeeping, variance estimates, determinism, reference."""

import json

import jax
import numpy as np
import pytest

from cmrjax.adaptive import _UnitRunner, finish_moments, iter_simulate_adaptive, simulate_crp_adaptive
from cmrjax.io import load_crp_grid, paper_axes
from cmrjax.model import SimConfig

SMALL = SimConfig(list_length=30, n_starts=2, max_recalls=10)


def direct(per):
    """The paper's per-start normalisation and the delta-method variance, written out from per-trial values.

    per: (lags, starts, trials) window counts / recalls of each trial.
    """
    K, S, T = per.shape
    m = per.mean(-1)  # (K, S)
    M = m.sum(0)
    crp_s = m / M
    y = (per - crp_s[:, :, None] * per.sum(0)[None]) / M[None, :, None]
    var = (y.var(-1, ddof=1) / T).sum(1) / S**2
    return crp_s.mean(1), crp_s.std(1, ddof=1) / np.sqrt(S), var


def moments(per):
    s = per.sum(0)
    return np.concatenate([per.sum(-1).T, (per**2).sum(-1).T, (per * s[None]).sum(-1).T, (s**2).sum(-1)[:, None]], -1)


def test_finish_moments_equals_the_direct_computation_from_per_trial_values():
    rng = np.random.default_rng(0)
    per = rng.poisson(1.0, (17, 4, 40)) / 10.0
    want = direct(per)
    got = finish_moments(moments(per), 40)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-15)
    # moments of two halves add up to those of the whole
    halves = moments(per[..., :25]) + moments(per[..., 25:])
    np.testing.assert_allclose(finish_moments(halves, 40)[2], want[2], rtol=1e-10)


def test_estimated_monte_carlo_variance_matches_the_spread_of_independent_repeats():
    """The variance that sizes the counts must be the real one: 160 independent units of 32 trials each."""
    run = _UnitRunner(jax.random.key(3), SMALL, 32, jax.devices()[:1], None, stratified=False)
    pts = np.tile([[0.6, 0.3, 0.4]], (160, 1))
    mom = run(pts, np.zeros(160, np.int64), np.arange(160), ("sampled", "rao_blackwell"))
    for e in range(2):
        crp, _, var = finish_moments(mom[:, e, 0], 32)  # per unit, from its trials
        empirical = crp.var(0, ddof=1)
        estimated = var.mean(0)
        big = empirical > 0.05 * empirical.max()
        ratio = estimated[big] / empirical[big]
        # 159 degrees of freedom: the empirical variance is within ~+-35% at 3 SE; delta-method bias is O(1/T)
        assert np.all((ratio > 0.6) & (ratio < 1.5)), ratio
        assert 0.8 < estimated.sum() / empirical.sum() < 1.25


@pytest.mark.parametrize("point", [(0.9, 0.05, 0.1), (0.5, 0.3, 0.6)])
def test_stratified_units_keep_the_mean_and_their_variance_is_measured_across_units(point):
    """Latin-hypercube units: the variance measured across units must be the real spread of the estimate, the
    estimate must keep the expectation of independent trials, and where the context drifts slowly stratifying
    must cut the variance (this fails if the uniforms are not stratified)."""
    units, group = 480, 12  # 40 replicates of 12 units of 16 trials each
    strat = _UnitRunner(jax.random.key(7), SMALL, 16, jax.devices()[:1], None, stratified=True)
    iid = _UnitRunner(jax.random.key(8), SMALL, 16, jax.devices()[:1], None, stratified=False)
    pts = np.tile([point], (units, 1))
    ms = strat(pts, np.zeros(units, np.int64), np.arange(units), ("rao_blackwell",))[:, 0]
    mi = iid(pts, np.zeros(units, np.int64), np.arange(units), ("rao_blackwell",))[:, 0]
    reps = ms.reshape(units // group, group, *ms.shape[1:]).sum(1)  # (40, 2, S, 3K+1)
    crp, _, var = finish_moments(reps[:, 1], group)  # per replicate, variance across its 12 units
    empirical = crp.var(0, ddof=1)
    assert 0.65 < var.mean(0).sum() / empirical.sum() < 1.5  # 39 degrees of freedom
    # same expectation as independent trials (paired over lags, the pooled estimates agree within 4 SE)
    c_s, _, v_s = finish_moments(ms.sum(0)[1], units)
    c_i, _, v_i = finish_moments(mi.sum(0)[0], units * 16)
    assert np.all(np.abs(c_s - c_i) <= 4 * np.sqrt(v_s + v_i) + 1e-7)
    ratio = v_s.sum() / v_i.sum()
    assert ratio < 0.5, ratio  # measured 0.19-0.20 at both points


def test_unit_moments_are_added_in_the_order_np_add_at_adds_them():
    """The runner's vectorised accumulation must give np.add.at's sums bit for bit (counts and CRPs must not
    depend on how units fall into chunks)."""
    from cmrjax.adaptive import _add_in_order

    rng = np.random.default_rng(0)
    for _ in range(100):
        rows = np.sort(rng.integers(0, 20, rng.integers(0, 60)))
        values = rng.standard_normal((len(rows), 3, 4)) * 10.0 ** rng.integers(-6, 6, (len(rows), 1, 1))
        want = rng.standard_normal((20, 3, 4))
        got = want.copy()
        np.add.at(want, rows, values)
        _add_in_order(got, rows, values)
        np.testing.assert_array_equal(got, want)


def test_results_depend_on_the_key_and_point_index_only():
    pts = np.array([[0.2, 0.3, 0.1], [0.5, 0.5, 0.5], [0.9, 0.1, 0.8], [0.4, 0.0, 0.0]])
    kw = dict(config=SMALL, match_trials=100, pilot_trials=16, unit_trials=8)
    a, ta = simulate_crp_adaptive(jax.random.key(1), pts, chunk_size=1, devices=jax.devices()[:1], **kw)
    b, tb = simulate_crp_adaptive(jax.random.key(1), pts, devices=jax.devices(), **kw)
    assert len(jax.devices()) >= 2, "conftest sets 4 host devices; sharding is not being exercised"
    np.testing.assert_array_equal(a.crp, b.crp)
    np.testing.assert_array_equal(ta, tb)
    for chunk in (3, 16):
        c, _ = simulate_crp_adaptive(jax.random.key(1), pts, chunk_size=chunk, devices=jax.devices()[:1], **kw)
        np.testing.assert_array_equal(a.crp, c.crp)
    parts = list(iter_simulate_adaptive(jax.random.key(1), pts[[2, 1]], indices=np.array([2, 1]), group_size=1,
                                        **kw))
    got = {int(i[0]): c[0] for i, c, _, _ in parts}
    np.testing.assert_array_equal(got[2], a.crp[2])
    np.testing.assert_array_equal(got[1], a.crp[1])
    assert ta[3] == 0  # closed-form corner
    assert np.isclose(a.crp[3].sum(), 1.0)


def test_counts_are_whole_units_from_the_pilot_up_and_follow_the_noise():
    """beta_enc 0.3, beta_rec 0.6: the draw is nearly all the noise, which the estimator removes (few trials);
    beta_enc 0.9, beta_rec 0.05: the noise is in the context path, which it does not touch (many)."""
    pts = np.array([[0.3, 0.6, 0.5], [0.9, 0.05, 0.1]])
    _, t = simulate_crp_adaptive(jax.random.key(0), pts, pilot_trials=32, unit_trials=16, max_trials=2048)
    assert np.all(t % 16 == 0) and np.all(t >= 32) and np.all(t <= 2048)
    assert t[0] < t[1]


@pytest.mark.parametrize("schedule", [(0.25, 1.0), (0.5, 0.8, 1.0)])
def test_the_rechecks_top_up_what_a_short_first_allocation_left_below_the_need(schedule):
    """A first allocation of part of the pilot's count must be topped up by the rechecks (measured on all the
    trials so far) to about what a 1,024-trial estimate of the variances asks for, and not far beyond it."""
    from cmrjax.simulate import estimator_variances, trials_to_match

    pts = np.array([[0.3, 0.6, 0.5], [0.9, 0.05, 0.1], [0.6, 0.2, 0.7]])
    need = trials_to_match(*estimator_variances(jax.random.key(1), pts, trials=1024, unit_trials=8), trials=1024)
    _, t = simulate_crp_adaptive(jax.random.key(0), pts, schedule=schedule)
    assert np.all(t >= 0.85 * need), (t, need)
    assert np.all(t <= 1.5 * need + 32), (t, need)


def test_beta_rec_zero_points_are_exact_with_no_trials():
    """beta_rec = 0 takes the static-context closed form (0 trials); the paper's corner keeps gamma_ft = 0."""
    from cmrjax.closed_form import corner_crp_per_start, static_context_crp_per_start

    pts = np.array([[0.6, 0.0, 0.4], [0.6, 0.0, 0.0], [0.6, 0.5, 0.4]])
    res, t = simulate_crp_adaptive(jax.random.key(0), pts, config=SimConfig(n_starts=3))
    np.testing.assert_allclose(res.crp[0], static_context_crp_per_start(0.6, np.arange(3), 100, 8, 50).mean(0))
    np.testing.assert_allclose(res.crp[1], corner_crp_per_start(0.6, 0.0, np.arange(3), 100, 8).mean(0))
    assert t[0] == 0 and t[1] == 0 and t[2] >= 16
    res, t = simulate_crp_adaptive(jax.random.key(0), pts[1:2], config=SimConfig(n_starts=3), corners="simulate")
    np.testing.assert_allclose(res.crp[0], static_context_crp_per_start(0.6, np.arange(3), 100, 8, 50).mean(0))
    assert t[0] == 0


def test_adaptive_crps_match_the_reference_grid_on_a_random_subset(ref_dir):
    """As the sampled test: the paper's precision means the tolerances of a 1000-trial sampled estimate."""
    grid = load_crp_grid(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")
    rng = np.random.default_rng(99)
    idx = [(rng.integers(20), rng.integers(1, 20), rng.integers(11)) for _ in range(10)]
    E, R, G = paper_axes()
    pts = np.array([[E[i], R[j], G[k]] for i, j, k in idx])
    res, _ = simulate_crp_adaptive(jax.random.key(5), pts)
    want = np.array([grid.crp[i, j, k] for i, j, k in idx])
    diff = np.abs(res.crp - want)
    assert diff.mean() <= 0.0006, diff.mean()
    assert diff.max() <= 0.006, diff.max()


def test_per_point_precision_targets_give_each_point_what_its_own_target_gives():
    """match_trials as one count per point: a point's trials and CRP are those of a run with its own target as
    the single count (results depend on the key and the point's index only), and a higher target costs more."""
    pts = np.array([[0.6, 0.3, 0.4], [0.6, 0.3, 0.4], [0.2, 0.7, 0.1]])
    kw = dict(config=SMALL, pilot_trials=16, unit_trials=8)
    per, t_per = simulate_crp_adaptive(jax.random.key(2), pts, match_trials=np.array([50, 800, 800]), **kw)
    lo, t_lo = simulate_crp_adaptive(jax.random.key(2), pts, match_trials=50, **kw)
    hi, t_hi = simulate_crp_adaptive(jax.random.key(2), pts, match_trials=800, **kw)
    np.testing.assert_array_equal(t_per, [t_lo[0], t_hi[1], t_hi[2]])
    np.testing.assert_array_equal(per.crp[0], lo.crp[0])
    np.testing.assert_array_equal(per.crp[1:], hi.crp[1:])
    assert t_per[1] > t_per[0]


@pytest.mark.parametrize("kw, match", [(dict(pilot_trials=0), "pilot_trials"), (dict(unit_trials=-1), "unit_trials"),
                                       (dict(corners="nope"), "corners"), (dict(schedule=(0.5,)), "schedule"),
                                       (dict(schedule=(0.8, 0.5, 1.0)), "schedule"), (dict(schedule=()), "schedule"),
                                       (dict(match_trials=0), "match_trials"),
                                       (dict(match_trials=np.array([100, 200])), "one per point"),
                                       (dict(match_trials=np.array([0])), "one per point"),
                                       (dict(match_trials=np.array([1.5])), "one per point")])
def test_bad_arguments_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        simulate_crp_adaptive(jax.random.key(0), np.array([[0.5, 0.5, 0.5]]), **kw)


def test_cli_auto_resumes_after_an_interruption_with_identical_results(tmp_path, monkeypatch):
    import cmrjax.adaptive as ad
    from cmrjax import cli

    args = ["simulate", "--beta-enc", "0.3,0.8", "--beta-rec", "0.2,0.6", "--gamma-ft", "0.5", "--starts", "2",
            "--list-length", "30", "--max-recalls", "10", "--trials", "auto", "--estimator", "rao-blackwell",
            "--match-trials", "100", "--pilot-trials", "16", "--no-progress"]
    full = tmp_path / "full.npz"
    assert cli.main(args + ["--out", str(full)]) == 0
    real = ad.iter_simulate_adaptive

    def interrupted(*a, **k):
        it = real(*a, **dict(k, group_size=1))
        yield next(it)
        raise KeyboardInterrupt

    out = tmp_path / "part.npz"
    monkeypatch.setattr(ad, "iter_simulate_adaptive", interrupted)
    assert cli.main(args + ["--out", str(out)]) == 130
    monkeypatch.setattr(ad, "iter_simulate_adaptive", real)
    assert (tmp_path / "part.partial.npz").exists() and not out.exists()
    assert cli.main(args + ["--out", str(out), "--resume"]) == 0
    assert not (tmp_path / "part.partial.npz").exists()
    a, b = np.load(full), np.load(out)
    np.testing.assert_array_equal(a["crp"], b["crp"])
    np.testing.assert_array_equal(a["trials"], b["trials"])
    assert json.loads(str(b["metadata"]))["trials"].startswith("auto")


@pytest.mark.parametrize("dof", [20, 60, 300])
def test_upper_variance_factor_is_a_one_sided_confidence_bound(dof):
    """A variance estimate s2 ~ sigma2 chi2_dof / dof, times the factor, exceeds sigma2 with probability Phi(z)."""
    from cmrjax.adaptive import upper_variance_factor

    s2 = np.random.default_rng(dof).chisquare(dof, 400_000) / dof
    for z, p in ((1.0, 0.8413), (0.0, 0.5)):
        assert abs(np.mean(s2 * upper_variance_factor(dof, z) >= 1) - p) < 0.01
