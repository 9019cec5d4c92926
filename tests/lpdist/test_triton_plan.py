"""How the Triton kernels split their work (plain arithmetic: no Triton, no GPU needed)."""

from __future__ import annotations

import itertools
import random

import pytest

from harness_plugins.lib.lpdist._triton_plan import (
    MIN_K_BLOCKS_PER_SLICE,
    MIN_O_BLOCKS_PER_SLICE,
    Tiles,
    cdiv,
    partial_bytes,
    plan_backward,
    plan_forward,
)

FWD = Tiles(block_b=32, block_o=32, block_k=4)
BWD = Tiles(block_b=32, block_o=8, block_k=32, num_warps=8)
H100 = 4 * 132  # PROGRAMS_PER_SM × an H100's multiprocessors
CAP = 256 * 2**20


def test_wide_outputs_are_not_split():
    plan = plan_forward(512, 5120, 5120, FWD, H100)
    assert (plan.k_slices, plan.k_per_slice) == (1, 5120)


def test_the_narrow_output_layer_splits_its_inputs():
    """5120 → 10 at B = 512 has 16 tiles of outputs: its inputs are split until the GPU is busy."""
    plan = plan_forward(512, 10, 5120, FWD, H100)
    tiles = cdiv(512, 32) * cdiv(10, 32)
    assert plan.k_slices == cdiv(H100, tiles) == 33
    assert plan.k_per_slice % FWD.block_k == 0 and plan.k_per_slice >= MIN_K_BLOCKS_PER_SLICE * FWD.block_k


def test_a_short_reduction_is_not_split():
    assert plan_forward(2, 2, MIN_K_BLOCKS_PER_SLICE * FWD.block_k - 1, FWD, H100).k_slices == 1


def test_the_paper_layers_backward_stays_under_the_cap_in_passes():
    plan = plan_backward(512, 5120, 5120, BWD, H100, CAP)
    assert plan.b_groups == 16
    assert plan.passes(5120) > 1
    assert partial_bytes(512, 5120, plan.k_per_pass, BWD, plan.o_slices, True, True) <= CAP


def test_few_grad_x_tiles_split_the_outputs():
    """784 → 5120: 16 × 25 tiles of grad_x; the 5120 outputs go in slices."""
    plan = plan_backward(512, 5120, 784, BWD, H100, CAP)
    assert plan.o_slices == 2 and plan.passes(784) == 1
    assert plan.o_per_slice % BWD.block_o == 0


def test_without_grad_w_there_are_no_planes_and_one_pass():
    plan = plan_backward(512, 5120, 5120, BWD, H100, cap_bytes=1, need_w=False)
    assert plan.passes(5120) == 1 and partial_bytes(512, 5120, 5120, BWD, plan.o_slices, True, False) == 0


def test_a_cap_below_one_block_of_columns_still_makes_progress():
    plan = plan_backward(64, 100, 300, BWD, 1, cap_bytes=1)
    assert plan.k_per_pass == BWD.block_k and plan.passes(300) == cdiv(300, BWD.block_k)


@pytest.mark.parametrize("sizes", [(0, 3, 3), (3, 0, 3), (3, 3, 0)])
def test_empty_problems_are_refused(sizes):
    with pytest.raises(ValueError, match="every size must be >= 1"):
        plan_forward(*sizes, FWD, H100)
    with pytest.raises(ValueError, match="every size must be >= 1"):
        plan_backward(*sizes, BWD, H100, CAP)


def test_plans_cover_every_column_and_output_once_with_no_empty_slice():
    rng = random.Random(0)
    shapes = [(rng.randint(1, 600), rng.randint(1, 6000), rng.randint(1, 6000)) for _ in range(300)]
    for (b, o, k), target, cap in itertools.product(shapes, (8, H100), (1, 2**16, CAP)):
        f = plan_forward(b, o, k, FWD, target)
        assert f.k_per_slice % FWD.block_k == 0
        assert (f.k_slices - 1) * f.k_per_slice < k <= f.k_slices * f.k_per_slice
        for need_x, need_w in ((True, True), (True, False), (False, True)):
            p = plan_backward(b, o, k, BWD, target, cap, need_x, need_w)
            assert p.o_per_slice % BWD.block_o == 0 and p.k_per_pass % BWD.block_k == 0
            assert (p.o_slices - 1) * p.o_per_slice < o <= p.o_slices * p.o_per_slice
            assert p.b_groups == cdiv(b, BWD.block_b)
            if p.o_slices > 1:  # a split slice is never shorter than the minimum (the last may be)
                assert p.o_per_slice >= MIN_O_BLOCKS_PER_SLICE * BWD.block_o
            if p.k_per_pass > BWD.block_k:  # over one block of columns, the cap holds
                assert partial_bytes(b, o, p.k_per_pass, BWD, p.o_slices, need_x, need_w) <= cap
