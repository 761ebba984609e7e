"""Ablation statistics (hand-computed), the original study's ablation file, and the offline demo + ablation
on the project's tiny trained model (skipped when the torch side is not installed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import ablation as A


def test_paired_t_by_hand():
    """b - a = 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), t = 2.5 / (sd / 2) = 3.873 (by hand)."""
    r = A.paired_tests(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]))
    assert r["mean_difference"] == pytest.approx(2.5)
    assert r["t"] == pytest.approx(2.5 / (math.sqrt(5 / 3) / 2))
    assert 0 < r["p_t"] < 0.05


def test_paired_t_without_scipy_uses_normal_approximation(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_scipy(name, *a, **k):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("no scipy")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    r = A.paired_tests(np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0]))
    t = 2.5 / (math.sqrt(5 / 3) / 2)
    assert r["t"] == pytest.approx(t)
    assert r["p_t"] == pytest.approx(math.erfc(t / math.sqrt(2)))
    assert "wilcoxon" not in r


def test_selection_and_random_draws():
    d = np.array([[0.3, np.nan, 0.1], [2.0, 0.05, 1.0]])
    # ceil(0.3 * 6) = 2 heads: the two smallest finite distances, 0.05 at (1, 1) and 0.1 at (0, 2)
    assert A.select_top_heads(d, 0.3) == [(1, 1), (0, 2)]
    # ceil(0.34 * 6) = 3: then 0.3 at (0, 0); the NaN head is never picked before finite ones
    assert A.select_top_heads(d, 0.34) == [(1, 1), (0, 2), (0, 0)]
    rng = np.random.default_rng(0)
    sets = A.random_head_sets(rng, (2, 3), 2, [(1, 1), (0, 2)], draws=20)
    for s in sets:
        assert len(set(s)) == 2 and not ({(1, 1), (0, 2)} & set(s))
    assert A.draw_level_p(1.0, np.array([0.0, 2.0, 3.0])) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="fraction"):
        A.select_top_heads(d, 0.0)


def test_reference_ablation_file_shows_the_papers_effect(ref_dir, tmp_path):
    """The original's GPT-2 small file: ablating CMR-like heads raises the ICL score (less in-context
    learning) far more than ablating random heads (paper Fig. 8)."""
    z = np.load(ref_dir / "ablation_gpt2-small.npz")
    res = A.reference_ablation(ref_dir, tmp_path)
    t = res["intact_vs_cmr_ablated"]
    assert t["n"] == 5000
    assert t["mean_a"] == pytest.approx(float(z["original_icl_score"].mean()))
    assert t["mean_b"] == pytest.approx(float(z["ablated_icl_score"].mean()))
    assert t["mean_difference"] > 0 and t["p_t"] < 1e-10
    assert res["random_vs_cmr_ablated"]["mean_difference"] > 0
    assert (tmp_path / "reference_gpt2-small.png").stat().st_size > 1000


def test_reference_only_without_reference_fails_clearly(tmp_path, capsys):
    rc = A.main(["--reference-only", "--reference", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "reference" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# the tiny model (torch side)


@pytest.fixture(scope="module")
def demo_tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformer_lens")
    from cmrjax.cli import main

    out = tmp_path_factory.mktemp("demo_tiny")
    rc = main(["demo", "--model", "tiny", "--out", str(out)])
    return rc, out


def test_demo_on_tiny_model_reports_a_fitted_induction_head(demo_tiny):
    rc, out = demo_tiny
    assert rc == 0
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_induction_heads"] >= 1
    best = summary["induction_heads"][0]
    assert best["matching_score"] > 0.5 and np.isfinite(best["distance"])
    assert best["label"] in report
    assert "distance_gradient" in best  # grid and gradient fits
    for png in ["profiles_by_layer", "closest_heads", "matching_vs_distance"]:
        assert (out / f"{png}.png").stat().st_size > 1000
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["arguments"]["seed"] == 0


def test_ablation_on_tiny_model_runs_with_paired_tests(demo_tiny, tmp_path):
    _, demo_out = demo_tiny
    out = tmp_path / "abl"
    # the demo fitted against the reference grid, or (reference absent) against the grid it simulated
    grid = demo_out / "crp_grid.npz"
    crps = ["--crps", str(grid)] if grid.exists() else []
    rc = A.main(["--model", "tiny", "--scores", str(demo_out / "scores_tiny.npz"), "--n-prompts", "32",
                 "--draws", "3", "--out", str(out), *crps])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())["tiny"]
    assert s["n_prompts"] == 32 and s["n_draws"] == 3
    assert len(s["ablated_heads"]) == 1  # ceil(10% of 8 heads)
    assert s["intact_vs_cmr_ablated"]["n"] == 32 and "p_t" in s["intact_vs_cmr_ablated"]
    # intact tiny model: in-context learning makes the late token far easier (by construction of the prompts)
    assert s["intact_vs_cmr_ablated"]["mean_a"] < -1.0
    assert (out / "tiny_ablation.png").stat().st_size > 1000
