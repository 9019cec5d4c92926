"""The l_p-dist operation and layers of l_inf-dist nets (Zhang et al., ICML 2021 and ICLR 2022).

``lp_dist`` / ``lp_dist_conv`` and ``inf_dist_bounds`` / ``inf_dist_bounds_conv``
are the operations (native C++ and inductor-compiled CPU paths, Triton on
CUDA and a pure PyTorch fallback, see :mod:`.ops`); ``LpDistLinear`` and ``LpDistConv2d`` the layers
(:mod:`.layers`); ``set_p`` sets p on every such layer of a model. The
``lpdist`` plugin registers the ``linf_dist_net`` model built from them, and
``linf_mlp`` builds its backbones from them.
"""

from harness_plugins.lib.lpdist.layers import LpDistConv2d, LpDistLinear, lp_layers, set_p
from harness_plugins.lib.lpdist.ops import (
    BACKEND_ENV,
    backend_name,
    inf_dist_bounds,
    inf_dist_bounds_conv,
    lp_dist,
    lp_dist_conv,
)

__all__ = [
    "BACKEND_ENV",
    "LpDistConv2d",
    "LpDistLinear",
    "backend_name",
    "inf_dist_bounds",
    "inf_dist_bounds_conv",
    "lp_dist",
    "lp_dist_conv",
    "lp_layers",
    "set_p",
]
