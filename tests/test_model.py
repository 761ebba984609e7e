"""The CMR equations in closed form (cmrjax.model) against dense matrix algebra in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cmrjax.model import (
    CMRParams,
    SimConfig,
    encoding_matrix,
    initial_context,
    m_row_col_mtm,
    power_tables,
    recall_probabilities,
    recall_update,
    validate_params,
)


def dense_M(beta_enc, n):
    """M = (I - (1 - beta_enc) T)^-1 T with the shift matrix T (the paper's definition), in float64."""
    T = np.eye(n + 1, k=1)
    return np.linalg.solve(np.eye(n + 1) - (1 - beta_enc) * T, T)


@pytest.mark.parametrize("beta_enc", [0.0, 0.05, 0.5, 1.0])
def test_encoding_matrix_equals_the_inverse_definition(beta_enc):
    """Given the paper's M = (I - rT)^-1 T, then the closed form r**(j-i-1)[j>i] is the same matrix."""
    with jax.enable_x64(True):
        M = np.asarray(encoding_matrix(beta_enc, 12, jnp.float64))
    np.testing.assert_allclose(M, dense_M(beta_enc, 12), atol=1e-12)


@pytest.mark.parametrize("beta_enc", [0.0, 0.05, 0.5, 1.0])
def test_rows_columns_and_mtm_match_dense_products(beta_enc):
    """Rows, columns and M^T M columns from O(n) closed forms equal the dense float64 products."""
    n = 12
    M = dense_M(beta_enc, n)
    with jax.enable_x64(True):
        tables = power_tables(beta_enc, n, jnp.float64)
        j = jnp.arange(n)  # all items at once: results are (n+1, n)
        row, col, mtm = map(np.asarray, m_row_col_mtm(tables, j, n))
    np.testing.assert_allclose(row, M[:n].T, atol=1e-12)
    np.testing.assert_allclose(col, M[:, :n], atol=1e-12)
    np.testing.assert_allclose(mtm, (M.T @ M)[:, :n], atol=1e-12)


def dense_update(t, j, params, M):
    """The paper's context update written with dense vectors (float64)."""
    n1 = len(t)
    f = np.eye(n1)[j]
    t_in = (1 - params.gamma_ft) * f + params.gamma_ft * M @ f
    t_in /= np.linalg.norm(t_in)
    t_new = (1 - params.beta_rec) * t + params.beta_rec * t_in
    return t_new / np.linalg.norm(t_new)


def test_recall_update_matches_dense_context_algebra_over_a_recall_sequence():
    """Given a sequence of recalls, the O(n) update of (t, a) tracks the dense update and a = M^T t exactly."""
    n, params = 30, CMRParams(0.3, 0.6, 0.4)
    M = dense_M(params.beta_enc, n)
    with jax.enable_x64(True):
        tables = power_tables(params.beta_enc, n, jnp.float64)
        t, a = initial_context(5, tables, n, jnp.float64)
        t_ref = np.eye(n + 1)[5]
        for j in [7, 6, 12, 3, 29, 0, 8]:
            t, a = recall_update(t, a, j, params, tables, n)
            t_ref = dense_update(t_ref, j, params, M)
            np.testing.assert_allclose(np.asarray(t), t_ref, atol=1e-12)
            np.testing.assert_allclose(np.asarray(a), M.T @ t_ref, atol=1e-12)
            assert np.isclose(np.linalg.norm(np.asarray(t)), 1.0, atol=1e-12)


def test_recall_update_is_vectorised_over_trailing_batch_axes():
    """Given a batch of trials on the trailing axis, each column equals the unbatched update."""
    n, params = 20, CMRParams(0.5, 0.3, 0.7)
    tables = power_tables(params.beta_enc, n)
    starts = jnp.array([0, 4, 9])
    t, a = initial_context(starts, tables, n)
    js = jnp.array([1, 6, 3])
    tb, ab = recall_update(t, a, js, params, tables, n)
    for b in range(3):
        t1, a1 = initial_context(int(starts[b]), tables, n)
        t1, a1 = recall_update(t1, a1, int(js[b]), params, tables, n)
        np.testing.assert_allclose(np.asarray(tb[:, b]), np.asarray(t1), atol=1e-6)
        np.testing.assert_allclose(np.asarray(ab[:, b]), np.asarray(a1), atol=1e-6)


def test_first_recall_distribution_is_the_cue_row_of_M():
    """Given t = e_s0, p = M[s0] / sum M[s0] (ratio rule, absorbing state last): hand-checkable for r = 1/2."""
    tables = power_tables(0.5, 3)
    _, a = initial_context(0, tables, 3)
    p = np.asarray(recall_probabilities(a))
    np.testing.assert_allclose(p, np.array([0, 1, 0.5, 0.25]) / 1.75, atol=1e-7)


def test_context_does_not_move_when_beta_rec_is_zero():
    n = 10
    tables = power_tables(0.4, n)
    t, a = initial_context(2, tables, n)
    t2, a2 = recall_update(t, a, 5, CMRParams(0.4, 0.0, 0.5), tables, n)
    np.testing.assert_allclose(np.asarray(t2), np.asarray(t), atol=1e-7)
    np.testing.assert_allclose(np.asarray(a2), np.asarray(a), atol=1e-7)


@pytest.mark.parametrize("bad", [[[1.3, 0, 0]], [[0.5, -0.1, 0]], [[0.5, 0.5, np.nan]], [[0.5, 0.5]]])
def test_validate_params_names_the_bad_value(bad):
    with pytest.raises(ValueError, match="outside|shape"):
        validate_params(np.array(bad, float))


def test_float64_config_without_x64_is_a_clear_error():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="jax_enable_x64"):
            SimConfig(dtype="float64").jnp_dtype


@pytest.mark.parametrize("kw", [dict(list_length=0), dict(n_starts=200), dict(max_recalls=-1), dict(dtype="f16")])
def test_sim_config_rejects_bad_settings(kw):
    with pytest.raises(ValueError):
        SimConfig(**kw)


def test_activation_only_update_equals_the_full_context_update():
    """t_j = a_{j+1} - r a_j lets a simulation carry a = M^T t alone; it must equal recall_update's a."""
    from cmrjax.model import context_at, recall_update_activations

    n, params = 30, CMRParams(0.2, 0.7, 0.6)
    with jax.enable_x64(True):
        tables = power_tables(params.beta_enc, n, jnp.float64)
        t, a = initial_context(3, tables, n, jnp.float64)
        a_only = a
        for j in [4, 9, 2, 2, 28, 15]:
            np.testing.assert_allclose(float(context_at(a_only, j, tables)), float(t[j]), atol=1e-12)
            t, a = recall_update(t, a, j, params, tables, n)
            a_only = recall_update_activations(a_only, j, params, tables, n)
            np.testing.assert_allclose(np.asarray(a_only), np.asarray(a), atol=1e-12)


@pytest.mark.parametrize("params", [(0.2, 0.7, 0.6), (1.0, 0.3, 0.5), (0.0, 0.4, 0.8), (0.9, 0.05, 0.0),
                                    (0.6, 1.0, 1.0)])
def test_cumulative_update_equals_the_cumsum_of_the_dense_update(params):
    """The simulator's closed-form cumulative activations equal cumsum(M^T t) of the dense context update,
    including r = 0 (beta_enc = 1) and r = 1 (beta_enc = 0), batched over trials."""
    from cmrjax.model import cumulative_input, initial_cumulative_activations, recall_update_cumulative

    n, p = 25, CMRParams(*params)
    g = params[2]
    with jax.enable_x64(True):
        tables = power_tables(p.beta_enc, n, jnp.float64)
        M = np.asarray(encoding_matrix(p.beta_enc, n, jnp.float64))
        for j in [1, 2, 12, n - 1]:  # the input alone, against the dense t_in (item 0 is never recalled: a_0 = 0)
            t_in = (1 - g) * np.eye(n + 1)[j] + g * M[:, j]
            t_in /= np.linalg.norm(t_in)
            np.testing.assert_allclose(np.asarray(cumulative_input(j, p, tables, n)), np.cumsum(M.T @ t_in),
                                       atol=1e-12)
        starts = jnp.array([3, 0, 19])
        t, a = initial_context(starts, tables, n, jnp.float64)
        A = initial_cumulative_activations(starts, tables, n)
        np.testing.assert_allclose(np.asarray(A), np.cumsum(np.asarray(a), 0), atol=1e-12)
        for j in ([4, 1, 20], [9, 1, 24], [2, 2, 2], [n - 1, 13, 1]):
            j = jnp.array(j)
            t, a = recall_update(t, a, j, p, tables, n)
            A = recall_update_cumulative(A, j, p, tables, n)
            np.testing.assert_allclose(np.asarray(A), np.cumsum(np.asarray(a), 0), atol=1e-12)


def test_mismatched_batch_shapes_are_caught_by_the_runtime_shape_check():
    """The suite runs with jaxtyping + beartype on cmrjax (pyproject addopts): t has 3 trials, j has 4."""
    import jaxtyping

    tables = power_tables(0.5, 10)
    t = jnp.ones((11, 3)) / jnp.sqrt(11.0)
    with pytest.raises(jaxtyping.TypeCheckError):
        recall_update(t, t, jnp.zeros(4, jnp.int32), CMRParams(0.5, 0.5, 0.5), tables, 10)
