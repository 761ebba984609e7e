"""One JAX CPU device per core: how a simulation uses every core of a CPU.

The simulator shards its parameter points (or work units) across all visible JAX devices, every device running
the same program on its share, with results that do not depend on the device count (:mod:`cmrjax.simulate`).
JAX gives a CPU a single device by default, whose programs split each recall step's small array operations
across the cores, with a synchronisation per operation; one device per core runs independent programs side by
side instead. Measured on the paper's grid at its precision on a 2-core CPU (``cmrjax simulate --grid paper
--estimator rao-blackwell --trials auto``): 53.4 s with one device (``--cpu-devices 1``), 21.7-21.8 s with two,
identical results (49.6 against 37.0-37.9 s with an earlier layout of the kernel).

``cmrjax simulate`` and the simulation benchmark call :func:`use_cpu_cores` themselves. Library users call it
right after ``import jax``::

    import jax
    import cmrjax

    cmrjax.use_cpu_cores()
"""

from __future__ import annotations

import os

import jax


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> bool:
    """Ask JAX for ``n`` CPU devices (default: one per usable core) before its backends start.

    Leaves everything as it is where a count was already chosen (``JAX_NUM_CPU_DEVICES``, the
    ``jax_num_cpu_devices`` option or XLA's ``--xla_force_host_platform_device_count``) or where JAX has
    already run a computation (the count can no longer change then). Devices of accelerators are unaffected.

    Returns:
      whether the count was set.
    """
    n = usable_cores() if n is None else int(n)
    if n < 1:
        raise ValueError(f"cpu devices={n} must be a positive integer")
    if (jax.config.jax_num_cpu_devices != -1
            or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")):
        return False
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backends have started
        return False
    return True
