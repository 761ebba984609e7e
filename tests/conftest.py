"""Shared test configuration.

JAX is set up the way equinox's and optax's suites do it: rank promotion raises, and tests that want
float64 enable it locally (``jax.enable_x64(True)`` as a context manager). Reference data are located through
:func:`cmrjax.reference.reference_dir` and tests that need them skip with a message naming the folder.
"""

from __future__ import annotations

import os

# Several CPU devices, so sharding code paths run in the ordinary test suite.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from cmrjax.reference import reference_dir  # noqa: E402


@pytest.fixture(scope="session")
def ref_dir():
    d = reference_dir()
    if d is None:
        pytest.skip(
            "reference data absent: expected ../shared/reference/icl-cmr beside the repository "
            "(or set CMRJAX_REFERENCE); these tests compare against the original study's files"
        )
    return d
