"""`cmrjax simulate`: output schema, resume after an interruption, and bad input."""

import json

import numpy as np
import pytest

from cmrjax import cli, cli_simulate
from cmrjax.io import load_crp_grid

SMALL = ["--beta-enc", "0.3,0.9", "--beta-rec", "0,0.5,1", "--gamma-ft", "0,0.6", "--trials", "8",
         "--starts", "3", "--max-recalls", "12", "--list-length", "40", "--no-progress"]


def test_grid_output_has_the_documented_keys_and_shapes(tmp_path):
    out = tmp_path / "g.npz"
    assert cli.main(["simulate", *SMALL, "--out", str(out)]) == 0
    d = np.load(out)
    assert d["crp"].shape == (2, 3, 2, 17) and d["crp_sem"].shape == (2, 3, 2, 17)
    np.testing.assert_array_equal(d["lags"], np.arange(-8, 9))
    np.testing.assert_array_equal(d["beta_rec"], [0, 0.5, 1])
    meta = json.loads(str(d["metadata"]))
    assert meta["seed"] == 0 and meta["trials"] == 8 and meta["estimator"] == "sampled"
    assert meta["max_recalls"] == 12 and meta["package_version"]
    np.testing.assert_allclose(d["crp"].sum(-1), 1.0, atol=1e-5)
    load_crp_grid(out)  # readable by the fit side


def test_points_file_gives_one_crp_per_point(tmp_path):
    pts = tmp_path / "p.npy"
    np.save(pts, np.array([[0.5, 0.5, 0.5], [0.2, 0.9, 0.1], [0.7, 0.0, 0.0]]))
    out = tmp_path / "p.npz"
    assert cli.main(["simulate", "--points", str(pts), "--trials", "8", "--starts", "2", "--no-progress",
                     "--estimator", "rao-blackwell", "--out", str(out)]) == 0
    d = np.load(out)
    assert d["crp"].shape == (3, 17) and d["points"].shape == (3, 3)
    assert json.loads(str(d["metadata"]))["estimator"] == "rao_blackwell"


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    """Given a run killed after its first chunk, when rerun with --resume, then the result is bit-identical
    to a run that was never interrupted and the partial file is gone."""
    full = tmp_path / "full.npz"
    assert cli.main(["simulate", *SMALL, "--chunk-size", "2", "--out", str(full)]) == 0

    import cmrjax.simulate as sim

    real = sim.iter_simulate_chunks

    def interrupted(*a, **k):
        it = real(*a, **k)
        yield next(it)  # the closed-form corners
        yield next(it)  # one simulated chunk
        raise KeyboardInterrupt

    out = tmp_path / "r.npz"
    monkeypatch.setattr(sim, "iter_simulate_chunks", interrupted)
    assert cli.main(["simulate", *SMALL, "--chunk-size", "2", "--out", str(out)]) == 130
    partial = tmp_path / "r.partial.npz"
    assert partial.exists() and not out.exists()
    monkeypatch.setattr(sim, "iter_simulate_chunks", real)
    assert cli.main(["simulate", *SMALL, "--chunk-size", "2", "--out", str(out)]) == 2  # needs --resume
    assert cli.main(["simulate", *SMALL, "--chunk-size", "2", "--out", str(out), "--resume"]) == 0
    np.testing.assert_array_equal(np.load(out)["crp"], np.load(full)["crp"])
    assert not partial.exists()


def test_resume_with_different_settings_is_refused(tmp_path, monkeypatch):
    import cmrjax.simulate as sim

    real = sim.iter_simulate_chunks

    def interrupted(*a, **k):
        it = real(*a, **k)
        yield next(it)
        raise KeyboardInterrupt

    out = tmp_path / "r.npz"
    monkeypatch.setattr(sim, "iter_simulate_chunks", interrupted)
    cli.main(["simulate", *SMALL, "--out", str(out)])
    monkeypatch.setattr(sim, "iter_simulate_chunks", real)
    args = [a if a != "8" else "9" for a in SMALL]  # other trial count
    assert cli.main(["simulate", *args, "--out", str(out), "--resume"]) == 2


@pytest.mark.parametrize("argv,match", [
    (["--grid", "paper", "--trials", "0"], "--trials=0"),
    (["--beta-enc", "1.3", "--beta-rec", "0", "--gamma-ft", "0"], "beta_enc=1.3"),
    (["--beta-enc", "0.5", "--beta-rec", "-0.1", "--gamma-ft", "0"], "beta_rec=-0.1"),
    (["--beta-enc", "0.5"], "give --grid paper"),
    (["--grid", "paper", "--starts", "0"], "positive"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, match):
    out = tmp_path / "x.npz"
    assert cli.main(["simulate", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--trials", "100"], ["--estimator", "sampled"], ["--corners", "closed-form"]])
def test_the_fit_surface_grid_refuses_settings_it_overrides(tmp_path, capsys, argv):
    out = tmp_path / "s.npz"
    assert cli.main(["simulate", "--grid", "fit-surface", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--grid fit-surface simulates with" in err and argv[1] in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_the_fit_surface_grid_refines_beta_rec_and_asks_more_precision_at_low_beta_enc():
    from cmrjax.io import paper_axes
    from cmrjax.simulate import grid_points
    from cmrjax.surface import fit_surface_axes, fit_surface_match_trials

    (e, r, g), (pe, pr, pg) = fit_surface_axes(), paper_axes()
    np.testing.assert_array_equal(e, pe)
    np.testing.assert_array_equal(g, pg)
    assert set(pr) <= set(r) and np.all(np.diff(r) > 0) and len(r) == 27
    np.testing.assert_allclose(np.diff(r[r <= 0.1]), 0.0125)
    pts = grid_points(e, r, g)
    m = fit_surface_match_trials(pts, 1000)
    assert m.dtype == np.int64 and set(m[pts[:, 0] <= 0.15]) == {64000} and set(m[pts[:, 0] > 0.15]) == {1000}
    assert (pts[:, 0] <= 0.15).sum() == 3 * 27 * 11


def test_unwritable_output_fails_before_any_work(tmp_path, capsys):
    assert cli.main(["simulate", "--grid", "paper", "--out", str(tmp_path / "no" / "x.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_truncated_points_file_is_a_clear_error(tmp_path, capsys):
    pts = tmp_path / "p.npy"
    np.save(pts, np.zeros((5, 3)) + 0.5)
    pts.write_bytes(pts.read_bytes()[:100])
    assert cli.main(["simulate", "--points", str(pts), "--out", str(tmp_path / "o.npz")]) == 2
    assert "cannot read --points" in capsys.readouterr().err


def test_help_lists_the_estimators(capsys):
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    out = capsys.readouterr().out
    assert "rao-blackwell" in out and "sampled" in out and "--resume" in out
    assert cli_simulate.register  # the module registers itself


def test_trials_auto_stores_per_point_counts_and_needs_rao_blackwell(tmp_path, capsys):
    args = [a for a in SMALL if a not in ("--trials", "8")]
    out = tmp_path / "a.npz"
    assert cli.main(["simulate", *args, "--trials", "auto", "--out", str(out)]) == 2
    assert "--estimator rao-blackwell" in capsys.readouterr().err
    assert cli.main(["simulate", *args, "--trials", "auto", "--pilot-trials", "8", "--estimator", "rao-blackwell",
                     "--out", str(out)]) == 0
    d = np.load(out)
    from cmrjax.closed_form import is_corner
    from cmrjax.simulate import grid_points

    pts = grid_points(d["beta_enc"], d["beta_rec"], d["gamma_ft"])
    exact = (is_corner(pts) | (pts[:, 1] == 0)).reshape(2, 3, 2)
    assert d["trials"].shape == (2, 3, 2) and np.all(d["trials"] % 8 == 0)
    assert np.all(d["trials"][~exact] >= 16)  # a pilot of at least two units of 8
    assert np.all((d["trials"] == 0) == exact)  # closed-form corners and beta_rec = 0 are not simulated
    assert json.loads(str(d["metadata"]))["trials"].startswith("auto")


def test_a_non_positive_cpu_device_count_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "x.npz"
    assert cli.main(["simulate", *SMALL, "--cpu-devices", "0", "--out", str(out)]) == 2
    assert "--cpu-devices" in capsys.readouterr().err and not out.exists()
