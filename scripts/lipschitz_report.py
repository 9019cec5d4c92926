"""Average pairwise Lipschitz constants of a saved run's network: LipLT against the naive bound.

    .venv/bin/python scripts/lipschitz_report.py runs/run-1 [--norm 2] [--norm inf]

Prints, per norm, the mean over unordered class pairs of the sound constants the
``liplt`` and ``lipschitz-naive`` certifiers use (the paper's Table 2 statistic,
"L_ij"), their ratio, and two estimates from below for comparison: a fresh
power iteration run to convergence (500 iterations from a random start; row
sums under l_inf) and, for a CRM network saved with its training vectors, the
code's own protocol (``liplt-estimate``: those vectors plus as many iterations
as training ran per step), with how far each is below the sound constant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness.catalog import Catalog
from harness.options import parse_options
from harness.plugins import load_plugins
from harness_plugins.lib.liplt.chain import Chain, pair_index
from harness_plugins.lib.liplt.constants import constants_for
from harness_plugins.lib.liplt.estimate import estimated_constants, has_power_vectors
from harness_plugins.lib.liplt.power import PowerIteration, RowSumEstimate, pairwise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--norm", action="append", choices=["2", "inf"])
    args = parser.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    catalog = Catalog.build(load_plugins())
    model_cls = catalog.get("model", config["model"]["name"])
    info = catalog.get("dataset", config["dataset"]).info
    model = model_cls(parse_options(model_cls.Options, config["model"]["options"], "model")).build(info)
    model.load_state_dict(torch.load(args.run_dir / "model.pt", map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    example = torch.rand(16, *info.shape, generator=torch.Generator().manual_seed(0))  # checks the reading
    p, q = pair_index(info.num_classes)
    for norm in args.norm or ["2", "inf"]:
        row = {}
        for method in ("liplt", "naive"):
            start = time.perf_counter()
            constants = constants_for(model, example, norm, method)
            row[method] = (constants[p, q].mean().item(), time.perf_counter() - start)
        chain = Chain.from_module(model, example)
        with torch.no_grad():
            estimate = PowerIteration(chain).norms(500) if norm == "2" else RowSumEstimate(chain, refresh=1).norms()
            trained = pairwise(chain, norm, estimate)[p, q].mean().item()
        (lip, t_lip), (naive, t_naive) = row["liplt"], row["naive"]
        print(
            f"l_{norm}: mean L_ij LipLT {lip:.4g} ({t_lip:.1f}s), naive {naive:.4g} ({t_naive:.1f}s), "
            f"naive/LipLT {naive / lip:.2f}x; converged estimate (LipLT) {trained:.4g} ({1 - trained / lip:.2%} below)"
        )
        if norm == "2" and has_power_vectors(model):
            protocol = estimated_constants(model, example)[p, q].mean().item()
            print(f"l_2: the code's protocol (training vectors + {model.power_iterations} iterations) {protocol:.4g} "
                  f"({1 - protocol / lip:.2%} below the sound LipLT)")


if __name__ == "__main__":
    main()
