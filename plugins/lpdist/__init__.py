"""The l_p-dist layer of l_inf-dist nets (Zhang et al., ICML 2021 and ICLR 2022).

A library shared by the dist-net plugins; it registers no components itself.
``lp_dist`` and ``inf_dist_bounds`` are the operations (pure PyTorch, chunked, any device),
``LpDistLinear`` the layer, and ``set_p`` sets p on every such layer of a model.
"""

from __future__ import annotations

from harness_plugins.lpdist.layers import LpDistLinear, lp_layers, set_p
from harness_plugins.lpdist.ops import inf_dist_bounds, lp_dist

__all__ = ["LpDistLinear", "inf_dist_bounds", "lp_dist", "lp_layers", "set_p"]
