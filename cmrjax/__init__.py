"""cmrjax: the Context Maintenance and Retrieval (CMR) model of episodic memory in JAX.

Fast lag-CRP simulation over whole parameter grids, the paper's CMR distance, grid and gradient fits of
attention heads, and the file schemas shared with the torch-side ``extraction`` package. Importing cmrjax never
imports torch.

Public API (re-exported here; ``_private`` names may change without notice):

* model: :class:`CMRParams`, :class:`SimConfig`, :func:`encoding_matrix`, :func:`recall_update`,
  :func:`recall_probabilities`
* simulation: :func:`simulate_crp`, :func:`simulate_grid`, :func:`simulate_recalls`, :func:`simulate_trials`,
  :func:`simulate_crp_adaptive` (per-point trial counts at a target precision), :func:`use_cpu_cores` (one
  JAX device per CPU core, before JAX starts)
* CRP definitions: :func:`crp_paper`, :func:`crp_conditional`
* fitting: :func:`fit_scores`, :class:`HeadFits`, :func:`cmr_distance`, :func:`align_to_profile`,
  :func:`build_surface`, :func:`surface_crp`
* files: :func:`load_scores`, :func:`save_scores`, :func:`load_crp_grid`, :func:`save_crp_grid`,
  :func:`load_fits`, :func:`save_fits`
"""

__version__ = "0.1.0"

from cmrjax.model import CMRParams, SimConfig, encoding_matrix, recall_probabilities, recall_update  # noqa: E402
from cmrjax.simulate import simulate_crp, simulate_grid, simulate_recalls, simulate_trials  # noqa: E402
from cmrjax.adaptive import simulate_crp_adaptive  # noqa: E402
from cmrjax.devices import use_cpu_cores  # noqa: E402
from cmrjax.crp import crp_conditional, crp_paper  # noqa: E402
from cmrjax.io import (  # noqa: E402
    CRPGrid,
    Scores,
    load_crp_grid,
    load_fits,
    load_scores,
    save_crp_grid,
    save_fits,
    save_scores,
)
from cmrjax.fit import HeadFits, align_to_profile, cmr_distance, fit_scores  # noqa: E402
from cmrjax.surface import build_surface, surface_crp  # noqa: E402

__all__ = [
    "CMRParams", "SimConfig", "encoding_matrix", "recall_probabilities", "recall_update",
    "simulate_crp", "simulate_grid", "simulate_recalls", "simulate_trials", "simulate_crp_adaptive",
    "use_cpu_cores",
    "crp_conditional", "crp_paper",
    "CRPGrid", "Scores", "load_crp_grid", "load_fits", "load_scores", "save_crp_grid", "save_fits", "save_scores",
    "HeadFits", "align_to_profile", "cmr_distance", "fit_scores", "build_surface", "surface_crp",
]
