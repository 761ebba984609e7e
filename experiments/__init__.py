"""Scripts reproducing the paper's analyses (one module per analysis, each runnable with ``python -m``).

=====================  ===========================================================================
module                 analysis
=====================  ===========================================================================
``single_heads``       Fig. 5, 6a: head profiles with CMR fits, matching vs distance, by-layer percent
``model_sizes``        Fig. 6b, c: percent of CMR-like heads by relative layer position, several models
``training``           Fig. 7b, S2, S4: Pythia checkpoints over training
``top_heads``          Fig. 7c-g: top-N CMR-like heads vs top-N induction heads, human CMR fits
``ablation``           Fig. 8: ICL score with CMR-like vs random heads ablated (paired tests)
``baselines``          CMR vs Gaussian and asymmetric-exponential lag kernels (AIC/BIC)
=====================  ===========================================================================

Each writes PNG and PDF figures, a CSV/JSON table of the numbers behind them and a ``metadata.json``
(arguments, seeds, versions) into the ``--out`` folder it creates.
"""
