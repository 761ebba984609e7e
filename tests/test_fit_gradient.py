"""Tests of the differentiable CRP surface, gradient fits, fit files and the `cmrjax fit` command.

Expected values come from: closed-form polynomials (the Catmull-Rom interpolant is exact for quadratics
inside the grid and passes through every node), central finite differences of the interpolant in float64,
synthetic heads made from a known CRP, and the grid fit (a gradient fit that starts from the best grid cell
can only improve on it on the same surface).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmrjax.cli import main as cli_main
from cmrjax.fit import fit_profiles, fit_scores
from cmrjax.io import CRPGrid, FileFormatError, load_crp_grid, load_fits, load_scores, save_fits
from cmrjax.surface import build_surface, catmull_rom_weights, hermite_weights, surface_crp


def _poly_grid(f) -> CRPGrid:
    e, r, g = np.arange(1, 11) / 10, np.arange(0, 11) / 10, np.arange(0, 6) / 5
    E, R, G = np.meshgrid(e, r, g, indexing="ij")
    crp = np.stack([f(E, R, G, k) for k in range(3)], axis=-1)
    return CRPGrid(crp=crp, beta_enc=e, beta_rec=r, gamma_ft=g, lags=np.arange(-1, 2))


def _quadratic(E, R, G, k):
    return 1 + k + 0.3 * E * E - 0.2 * E * R + 0.5 * G * G + 0.1 * R - 0.4 * E * G + 0.05 * k * R * R


@pytest.fixture(scope="module")
def grid(ref_dir) -> CRPGrid:
    return load_crp_grid(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")


def test_catmull_rom_weights_sum_to_one_and_interpolate_nodes():
    for t in (0.0, 0.3, 0.77, 1.0):
        assert float(jnp.sum(catmull_rom_weights(jnp.asarray(t)))) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(catmull_rom_weights(jnp.asarray(0.0)), [0, 1, 0, 0], atol=1e-7)


def test_surface_passes_through_every_node_of_the_reference_grid(grid):
    surf = build_surface(grid)
    pts = grid.points[::37]
    vals = jax.vmap(surface_crp, in_axes=(None, 0))(surf, jnp.asarray(pts, jnp.float32))
    np.testing.assert_allclose(vals, grid.crp.reshape(-1, 17)[::37], atol=2e-6)


def test_surface_is_exact_for_a_quadratic_inside_the_grid():
    """Catmull-Rom reproduces quadratics away from the edge cells (hand-chosen interior points)."""
    g = _poly_grid(_quadratic)
    with jax.enable_x64(True):
        surf = build_surface(g)
        pts = np.array([[0.34, 0.47, 0.5], [0.55, 0.25, 0.3], [0.71, 0.62, 0.45]])
        vals = np.asarray(jax.vmap(surface_crp, in_axes=(None, 0))(surf, jnp.asarray(pts)))
    expect = np.stack([_quadratic(pts[:, 0], pts[:, 1], pts[:, 2], k) for k in range(3)], -1)
    np.testing.assert_allclose(vals, expect, rtol=1e-12)


def test_surface_gradients_match_finite_differences(grid):
    """jax.grad of the interpolant equals central differences of the interpolant (float64, inside cells)."""
    with jax.enable_x64(True):
        surf = build_surface(grid)
        w = jnp.linspace(-1.0, 1.0, 17)

        def f(x):
            return jnp.sum(w * surface_crp(surf, x))

        for x in ([0.52, 0.63, 0.37], [0.83, 0.12, 0.71], [0.33, 0.91, 0.14]):
            x = jnp.asarray(x)
            g = np.asarray(jax.grad(f)(x))
            h = 1e-6
            fd = np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in jnp.eye(3)])
            np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)


def test_axes_that_do_not_increase_are_refused():
    g = _poly_grid(_quadratic)
    bad = CRPGrid(crp=g.crp, beta_enc=g.beta_enc[::-1], beta_rec=g.beta_rec, gamma_ft=g.gamma_ft, lags=g.lags)
    with pytest.raises(ValueError, match="strictly increasing"):
        build_surface(bad)


def test_hermite_weights_on_equal_spacings_are_catmull_rom():
    t = jnp.linspace(0, 1, 7)
    for h in (1.0, 0.05):
        w = jax.vmap(lambda s: hermite_weights(s, jnp.full(3, h)))(t)
        np.testing.assert_allclose(w, jax.vmap(catmull_rom_weights)(t), atol=1e-6)


def test_non_uniform_surface_is_exact_for_a_quadratic_and_passes_through_its_nodes():
    """Nodes packed near beta_rec = 0 and unevenly in beta_enc: the three-point slopes make the cubic exact
    for quadratics in the parameters (hand-chosen interior points), and every node is reproduced."""
    e = np.array([0.1, 0.15, 0.3, 0.4, 0.6, 0.65, 0.8, 1.0])
    r = np.array([0.0, 0.0125, 0.025, 0.05, 0.1, 0.3, 0.5, 0.55, 0.9, 1.0])
    gm = np.array([0.0, 0.1, 0.4, 0.5, 0.8, 1.0])
    E, R, G = np.meshgrid(e, r, gm, indexing="ij")
    g = CRPGrid(crp=np.stack([_quadratic(E, R, G, k) for k in range(3)], -1), beta_enc=e, beta_rec=r,
                gamma_ft=gm, lags=np.arange(-1, 2))
    with jax.enable_x64(True):
        surf = build_surface(g)
        pts = np.array([[0.34, 0.03, 0.45], [0.55, 0.2, 0.3], [0.62, 0.51, 0.6], [0.2, 0.07, 0.42]])
        vals = np.asarray(jax.vmap(surface_crp, in_axes=(None, 0))(surf, jnp.asarray(pts)))
        nodes = np.asarray(jax.vmap(surface_crp, in_axes=(None, 0))(surf, jnp.asarray(g.points)))
    expect = np.stack([_quadratic(pts[:, 0], pts[:, 1], pts[:, 2], k) for k in range(3)], -1)
    np.testing.assert_allclose(vals, expect, rtol=1e-12)
    np.testing.assert_allclose(nodes, g.crp.reshape(-1, 3), rtol=1e-12)


def test_gradient_fit_recovers_an_off_grid_head(grid):
    """Given a head that is exactly an affine image of the surface CRP at off-grid parameters, the gradient
    fit reaches (near) zero distance, well below the grid fit's, and lands near the true parameters."""
    truth = np.array([0.62, 0.83, 0.37])
    with jax.enable_x64(True):
        surf_all = build_surface(grid)
        c = np.asarray(surface_crp(surf_all, jnp.asarray(truth)))
    prof = 4.0 * c[:16] + 2.0
    out = fit_profiles(prof[None, :], grid, method="both", steps=400)
    assert out["distance"][0] < 1e-4
    assert out["distance"][0] < 0.05 * out["distance_grid"][0]
    np.testing.assert_allclose(out["params"][0], truth, atol=0.03)
    assert out["converged"][0]


def test_gradient_fit_never_worse_than_grid_on_the_same_surface(ref_dir, grid):
    """Starting from the best grid cells on the interpolant of the same grid (which passes through those
    cells), the surface distance is <= the grid distance for every head (up to float32 rounding)."""
    s = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz")
    f = fit_scores(s, grid, method="both")
    assert np.all(f.distance <= f.distance_grid * (1 + 1e-5))
    assert np.all((f.params >= 0) & (f.params <= 1))
    assert f.params.shape == (6, 8, 3) and f.converged.dtype == bool


def test_gradient_fits_of_several_files_equal_separate_fits(ref_dir, grid):
    s1 = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp000.npz")
    s2 = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz")
    # float64: in float32 the batch size changes XLA's rounding and Adam's normalised steps amplify it
    with jax.enable_x64(True):
        both = fit_scores([s1, s2], grid, method="gradient", steps=50)
        alone = fit_scores(s2, grid, method="gradient", steps=50)
    np.testing.assert_allclose(both[1].distance, alone.distance, rtol=1e-9)
    np.testing.assert_allclose(both[1].params, alone.params, atol=1e-7)


def test_softmax_gradient_fit_improves_on_grid(ref_dir, grid):
    s = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz")
    f = fit_scores(s, grid, method="both", link="softmax", steps=100)
    ok = np.isfinite(f.distance_grid)
    assert np.all(f.distance[ok] <= f.distance_grid[ok] * (1 + 1e-5) + 1e-7)
    assert np.all(f.scale[ok] >= 0)


# ---------------------------------------------------------------------------------------------------
# fit files and the command


def test_save_and_load_fits_round_trip(tmp_path, ref_dir, grid):
    s = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz")
    f = fit_scores(s, grid, method="both", steps=20)
    path = save_fits(tmp_path / "fits.npz", f)
    g = load_fits(path)
    for k in ("labels", "params_grid", "index_grid", "distance_grid", "scale_grid", "lags_fit", "profile_fit",
              "crp_fit_grid", "params", "distance", "scale", "converged"):
        np.testing.assert_array_equal(getattr(g, k), getattr(f, k), err_msg=k)
    assert g.metadata["link"] == "minmax" and g.metadata["kind"] == "fits"
    grid_only = fit_scores(s, grid)
    h = load_fits(save_fits(tmp_path / "grid.npz", grid_only))
    assert h.params is None and h.distance is None


def test_load_fits_refuses_empty_and_truncated_files(tmp_path, ref_dir, grid):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        load_fits(empty)
    s = load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz")
    good = save_fits(tmp_path / "good.npz", fit_scores(s, grid))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FileFormatError, match="truncated"):
        load_fits(cut)


def test_cli_fit_writes_file_and_summary(tmp_path, ref_dir, capsys):
    out = tmp_path / "g.npz"
    rc = cli_main(["fit", "--scores", str(ref_dir / "scores" / "gpt2-small.npz"), "--crps",
                   str(ref_dir / "crps" / "cmr_crp_avg_20_11.npy"), "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "68/144" in text and "L1H11" in text
    assert load_fits(out).distance_grid.shape == (12, 12)


def test_cli_fit_several_files_into_a_folder(tmp_path, ref_dir):
    sc = ref_dir / "scores"
    rc = cli_main(["fit", "--scores", str(sc / "pythia-70m-deduped-v0__cp000.npz"),
                   str(sc / "pythia-70m-deduped-v0__cp010.npz"), "--crps",
                   str(ref_dir / "crps" / "cmr_crp_avg_20_11.npy"), "--out", str(tmp_path / "fits"),
                   "--method", "gradient", "--steps", "10", "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "fits").iterdir()) == [
        "pythia-70m-deduped-v0__cp000.fits.npz", "pythia-70m-deduped-v0__cp010.fits.npz"]


def test_cli_fit_min_gain_keeps_the_grid_cell_unless_the_surface_gains_that_much(tmp_path, ref_dir, capsys):
    """--min-gain 0.9: no gradient fit lowers the surface distance by 90%, so every head keeps its best grid
    cell exactly; 0: most heads move. A value outside [0, 1) is a one-line error."""
    args = ["fit", "--scores", str(ref_dir / "scores" / "pythia-70m-deduped-v0__cp000.npz"), "--crps",
            str(ref_dir / "crps" / "cmr_crp_avg_20_11.npy"), "--method", "both", "--steps", "20", "--no-progress"]
    for gain in ("0.9", "0"):
        assert cli_main([*args, "--min-gain", gain, "--out", str(tmp_path / f"f{gain}.npz")]) == 0
    stay, move = load_fits(tmp_path / "f0.9.npz"), load_fits(tmp_path / "f0.npz")
    ok = np.isfinite(stay.distance_grid)
    np.testing.assert_array_equal(stay.params[ok], stay.params_grid[ok])
    assert stay.metadata["gradient"]["min_gain"] == 0.9
    assert np.any(move.params[ok] != move.params_grid[ok])
    capsys.readouterr()
    assert cli_main([*args, "--min-gain", "1.5", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--min-gain 1.5" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("case", ["empty", "truncated", "wrong_lags", "shape_mismatch", "pickle"])
def test_cli_fit_bad_inputs_exit_2(tmp_path, ref_dir, capsys, case):
    crps = str(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")
    src = ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz"
    bad = tmp_path / f"{case}.npz"
    z = dict(np.load(src))
    if case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(src.read_bytes()[:3000])
    elif case == "wrong_lags":
        z["CRP_scores"] = z["CRP_scores"][..., :8]
        z["CRP_scores_sem"] = z["CRP_scores_sem"][..., :8]
        z["lags"] = np.arange(-8, 0)
        np.savez(bad, **z)
    elif case == "shape_mismatch":
        z["CRP_scores_sem"] = z["CRP_scores_sem"][:, :4]
        np.savez(bad, **z)
    else:
        bad = ref_dir / "original-format" / "all_scores_pythia_70m_cp142.pkl"
    rc = cli_main(["fit", "--scores", str(bad), "--crps", crps, "--out", str(tmp_path / "o.npz"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err
    assert not (tmp_path / "o.npz").exists()


def test_cli_reads_original_pickles_only_with_allow_pickle(tmp_path, ref_dir, capsys):
    """The original-format pickle of Pythia-70m cp142 gives the same grid fits as its converted .npz."""
    pytest.importorskip("joblib", reason="reading the original pickles needs joblib")
    pytest.importorskip("torch", reason="the original pickles hold torch tensors")
    pkl = ref_dir / "original-format" / "all_scores_pythia_70m_cp142.pkl"
    crps = str(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")
    out = tmp_path / "p.npz"
    rc = cli_main(["fit", "--scores", str(pkl), "--crps", crps, "--out", str(out), "--allow-pickle",
                   "--no-progress"])
    assert rc == 0
    npz = fit_scores(load_scores(ref_dir / "scores" / "pythia-70m-deduped-v0__cp142.npz"),
                     load_crp_grid(crps))
    got = load_fits(out)
    np.testing.assert_array_equal(got.index_grid, npz.index_grid)
    np.testing.assert_allclose(got.distance_grid, npz.distance_grid, rtol=1e-5)
