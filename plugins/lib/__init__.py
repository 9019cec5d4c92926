"""The library the built-in plugins stand on (installed as ``harness_plugins.lib``).

Code that two or more plugins share lives here, so that no plugin imports
another: the l_p-dist operation and layers (:mod:`.lpdist`), the Lipschitz
chain reading, LipLT and its sound norms (:mod:`.liplt`), auto_LiRPA's
compatibility shim and margin bounds (:mod:`.lirpa`), certified-margin helpers
(:mod:`.margins`), the ICML 2021 training recipe that ``linf_v1`` and the
hybrid share (:mod:`.v1_recipe`), the checks every l_inf-dist trainer's
options share (:mod:`.relaxation_options`) and the papers every component
cites (:mod:`.citations`).

A library module registers nothing (no hook implementations, no components
handed to the host) and imports no plugin; plugins refer to each other's
components only by registered name. ``tests/test_layering.py`` checks both.
"""
