"""One JAX CPU device per core (cmrjax.devices): set before JAX starts, never over a user's choice."""

import os
import subprocess
import sys

import pytest

import cmrjax
from cmrjax.devices import use_cpu_cores


def run(code: str, **env) -> str:
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    e.update(env, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout


def test_sets_the_device_count_before_jax_starts():
    assert run("import jax, cmrjax; print(cmrjax.use_cpu_cores(3), len(jax.devices()))").split() == ["True", "3"]


def test_leaves_a_count_the_user_chose():
    out = run("import jax, cmrjax; print(cmrjax.use_cpu_cores(3), len(jax.devices()))",
              XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert out.split() == ["False", "2"]
    out = run("import jax, cmrjax; print(cmrjax.use_cpu_cores(3), len(jax.devices()))", JAX_NUM_CPU_DEVICES="2")
    assert out.split() == ["False", "2"]


def test_does_nothing_once_jax_has_started():
    out = run("import jax, jax.numpy as jnp, cmrjax; jnp.zeros(1).block_until_ready(); "
              "print(cmrjax.use_cpu_cores(3), len(jax.devices()))")
    assert out.split() == ["False", "1"]


def test_rejects_a_non_positive_count():
    with pytest.raises(ValueError, match="positive"):
        use_cpu_cores(0)
    assert cmrjax.use_cpu_cores is use_cpu_cores
