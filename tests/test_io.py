"""File schemas (cmrjax.io): round trips, reference files, and files that are not what they claim."""

import numpy as np
import pytest

from cmrjax.io import (
    FileFormatError,
    atomic_savez,
    load_crp_grid,
    load_original_pickle,
    load_scores,
    save_scores,
)


def _scores(L=2, H=3, K=16):
    rng = np.random.default_rng(0)
    return dict(crp_scores=rng.normal(size=(L, H, K)), crp_scores_sem=rng.random((L, H, K)),
                head_scores=rng.random((L, H)), copying_score=rng.uniform(-1, 1, (L, H)))


def test_scores_round_trip_with_metadata(tmp_path):
    s = _scores()
    p = save_scores(tmp_path / "m.npz", **s, metadata={"model": "toy", "seed": 3})
    back = load_scores(p)
    np.testing.assert_array_equal(back.crp_scores, s["crp_scores"])
    assert back.labels[1, 2] == "L1H2" and back.metadata["model"] == "toy" and back.metadata["seed"] == 3
    np.testing.assert_array_equal(back.lags, np.arange(-8, 8))


def test_every_reference_scores_file_loads(ref_dir):
    for f in sorted((ref_dir / "scores").glob("*.npz")):
        s = load_scores(f)
        assert s.crp_scores.shape[-1] == 16 and s.labels.shape == s.head_scores.shape


def test_reference_crp_grid_loads_with_paper_axes_and_its_sem(ref_dir):
    g = load_crp_grid(ref_dir / "crps" / "cmr_crp_avg_20_11.npy")
    assert g.crp.shape == (20, 21, 11, 17) and g.crp_sem is not None
    np.testing.assert_allclose(g.beta_enc[[0, -1]], [0.05, 1.0])
    np.testing.assert_allclose(g.gamma_ft[[0, -1]], [0.0, 1.0])


def test_truncated_and_empty_files_are_clear_errors(tmp_path):
    p = save_scores(tmp_path / "m.npz", **_scores())
    t = tmp_path / "t.npz"
    t.write_bytes(p.read_bytes()[:200])
    with pytest.raises(FileFormatError, match="truncated"):
        load_scores(t)
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(FileFormatError, match="empty"):
        load_scores(tmp_path / "e.npz")
    with pytest.raises(FileFormatError, match="does not exist"):
        load_scores(tmp_path / "missing.npz")


def test_shape_mismatch_is_refused_on_write(tmp_path):
    s = _scores()
    s["head_scores"] = s["head_scores"][:1]
    with pytest.raises(FileFormatError, match="head_scores"):
        save_scores(tmp_path / "m.npz", **s)
    assert not list(tmp_path.iterdir())


def test_a_pickle_is_never_loaded_without_explicit_permission(tmp_path):
    p = tmp_path / "x.pkl"
    p.write_bytes(b"not even a pickle")
    with pytest.raises(PermissionError, match="allow_pickle"):
        load_original_pickle(p)


def test_object_arrays_inside_npz_are_refused(tmp_path):
    """np.load(allow_pickle=False): an .npz smuggling a pickled object array is a format error, not code."""
    p = tmp_path / "o.npz"
    np.savez(p, CRP_scores=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FileFormatError):
        load_scores(p)


def test_atomic_write_leaves_no_temporary_file_behind(tmp_path):
    atomic_savez(tmp_path / "a.npz", x=np.arange(3))
    assert [f.name for f in tmp_path.iterdir()] == ["a.npz"]
    with pytest.raises(OSError, match="does not exist"):
        atomic_savez(tmp_path / "no" / "a.npz", x=np.arange(3))
