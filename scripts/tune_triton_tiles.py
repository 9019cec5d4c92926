"""Time the Triton l_p-dist kernels under several tile sizes on one shape (run on a CUDA machine).

Prints one line per (kernel, mode, tiles): milliseconds per call, median of 10 after warm-up.
The best tiles go into plugins/lib/lpdist/_triton.py (_FWD, _BWD).

    python scripts/tune_triton_tiles.py [B I O]
"""

import itertools
import statistics
import sys

import torch
import triton

from harness_plugins.lib.lpdist import _triton as T
from harness_plugins.lib.lpdist._triton_plan import Tiles

b, i, o = (int(v) for v in sys.argv[1:4]) if len(sys.argv) > 3 else (512, 5120, 5120)
x = torch.rand(b, i, device="cuda")
w = torch.randn(o, i, device="cuda")
y = torch.rand(b, o, device="cuda") * 10 + 5
g = torch.randn(b, o, device="cuda")


def time_ms(fn):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return statistics.median(out)


print(f"shape B={b} I={i} O={o}; current fwd {T._FWD} bwd {T._BWD}")
for mode, name in ((T._MODE_INF, "inf"), (T._MODE_P8, "p8"), (T._MODE_GENERAL, "general")):
    for bb, bo, bk, nw in itertools.product((32, 64), (32, 64), (4, 8, 16), (4, 8)):
        if bb * bo * bk > 32768:
            continue
        meta = {"BLOCK_B": bb, "BLOCK_O": bo, "BLOCK_K": bk, "num_warps": nw}
        out_y = torch.empty(b, o, device="cuda")
        idx = torch.empty(b, o, device="cuda", dtype=torch.int32)
        grid = (triton.cdiv(b, bb), triton.cdiv(o, bo), 1)
        try:
            ms = time_ms(lambda grid=grid, out_y=out_y, idx=idx, mode=mode, meta=meta: T._forward_kernel[grid](
                x, w, out_y, idx, b, o, i, i, 9.5, MODE=mode, SPLIT=False, **meta))
            print(f"fwd {name:8s} {meta} {ms:.3f} ms  {b * i * o / ms / 1e9:.1f} T pairs/s")
        except Exception as exc:  # a tile that does not fit  # noqa: BLE001
            print(f"fwd {name:8s} {meta} failed: {type(exc).__name__}")
# The fused backward (both gradients, partial planes and their sums included), per tile.
tuned = T._BWD
for mode, name in ((T._MODE_P8, "p8"), (T._MODE_GENERAL, "general")):
    for bb, bo, bk, nw in itertools.product((16, 32, 64), (4, 8, 16), (32, 64), (4, 8)):
        if bb * bo * bk > 32768:
            continue
        T._BWD = Tiles(bb, bo, bk, nw)
        try:
            ms = time_ms(lambda mode=mode: T._backward(x, w, y, g, 9.5, mode, True, True))
            print(f"bwd {name:8s} {T._BWD} {ms:.3f} ms  {b * i * o / ms / 1e9:.1f} T pairs/s")
        except Exception as exc:  # noqa: BLE001
            print(f"bwd {name:8s} {T._BWD} failed: {type(exc).__name__}")
T._BWD = tuned
