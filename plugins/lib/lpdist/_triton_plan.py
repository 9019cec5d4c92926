"""How the Triton kernels of :mod:`._triton` split their work: plain arithmetic, without Triton.

A GPU is kept busy by enough programs (tiles) in flight, not by big tiles. When
a problem's output has too few tiles, the reduction behind each output is split
into slices, each slice is computed by its own programs into a partial result,
and the partials are combined afterwards in a fixed order, so results never
depend on scheduling (no atomics):

* forward, few B×O tiles (5120 → 10): the reduction over inputs (K) is split;
  the slices' maxima, argmaxima and sums are combined by the caller;
* backward, few B×K tiles of grad_x: the reduction over outputs (O) is split
  into partial grad_x planes. grad_w, reduced over the batch, always goes
  through one partial plane per block of samples (the program that owns those
  samples computes every term once, for both gradients); those planes are
  capped in bytes, and the columns are done in passes when they would not fit.

Importable without Triton, so that the plans are unit-tested everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

#: A forward slice covers at least this many BLOCK_K blocks of inputs (fewer would spend more
#: on loading tiles and combining partials than on the reduction itself).
MIN_K_BLOCKS_PER_SLICE = 8
#: A backward slice covers at least this many BLOCK_O blocks of outputs.
MIN_O_BLOCKS_PER_SLICE = 4
_FLOAT_BYTES = 4


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Tiles:
    """One kernel's tile: BLOCK_B samples × BLOCK_O outputs × BLOCK_K inputs, and its warps."""

    block_b: int
    block_o: int
    block_k: int
    num_warps: int = 4

    def meta(self) -> dict[str, int]:
        """The kernel's constexpr and launch arguments."""
        return {"BLOCK_B": self.block_b, "BLOCK_O": self.block_o, "BLOCK_K": self.block_k, "num_warps": self.num_warps}


@dataclass(frozen=True)
class ForwardPlan:
    """The forward's reduction over the ``inputs`` columns, in ``k_slices`` slices of ``k_per_slice``
    columns (a multiple of BLOCK_K; the last slice may be shorter, none is empty)."""

    k_slices: int
    k_per_slice: int


@dataclass(frozen=True)
class BackwardPlan:
    """The fused backward: per pass, ``k_per_pass`` columns (a multiple of BLOCK_K, the last pass
    may be shorter); the reduction over outputs in ``o_slices`` slices of ``o_per_slice`` outputs (a
    multiple of BLOCK_O); grad_w through ``b_groups`` partial planes, one per BLOCK_B samples."""

    o_slices: int
    o_per_slice: int
    k_per_pass: int
    b_groups: int

    def passes(self, inputs: int) -> int:
        return cdiv(inputs, self.k_per_pass)


def _check_sizes(*sizes: int) -> None:
    if min(sizes) < 1:
        raise ValueError(f"every size must be >= 1, got {sizes}")


def plan_forward(batch: int, outputs: int, inputs: int, tiles: Tiles, target_programs: int) -> ForwardPlan:
    """Split the inputs when the B×O tiles alone are fewer than ``target_programs``.

    :param target_programs: programs that keep the device busy (a few per multiprocessor).
    :returns: the slices; one slice of all columns when no split is needed or possible.
    :raises ValueError: for a size below 1.
    """
    _check_sizes(batch, outputs, inputs)
    tiles_bo = cdiv(batch, tiles.block_b) * cdiv(outputs, tiles.block_o)
    k_blocks = cdiv(inputs, tiles.block_k)
    slices = 1
    if tiles_bo < target_programs:
        slices = max(1, min(cdiv(target_programs, tiles_bo), k_blocks // MIN_K_BLOCKS_PER_SLICE))
    per_slice = cdiv(k_blocks, slices) * tiles.block_k
    return ForwardPlan(k_slices=cdiv(inputs, per_slice), k_per_slice=per_slice)


def partial_bytes(batch: int, outputs: int, columns: int, tiles: Tiles, o_slices: int, need_x: bool, need_w: bool) -> int:
    """Bytes of the partial planes of one backward pass over ``columns`` columns.

    grad_w: one O×columns plane per block of samples; grad_x: one B×columns plane per slice of
    outputs, only when there are several (one slice writes grad_x itself).
    """
    per_column = 0
    if need_w:
        per_column += cdiv(batch, tiles.block_b) * outputs
    if need_x and o_slices > 1:
        per_column += o_slices * batch
    return per_column * columns * _FLOAT_BYTES


def _columns_per_pass(batch: int, outputs: int, inputs: int, tiles: Tiles, o_slices: int, cap_bytes: int,
                      need_x: bool, need_w: bool) -> int:
    per_column = partial_bytes(batch, outputs, 1, tiles, o_slices, need_x, need_w)
    if per_column == 0:
        return cdiv(inputs, tiles.block_k) * tiles.block_k
    # At least one block of columns per pass, even over the cap: the cap bounds memory, it
    # cannot make a pass empty.
    columns = max(tiles.block_k, cap_bytes // per_column // tiles.block_k * tiles.block_k)
    return min(columns, cdiv(inputs, tiles.block_k) * tiles.block_k)


def plan_backward(
    batch: int, outputs: int, inputs: int, tiles: Tiles, target_programs: int, cap_bytes: int,
    need_x: bool = True, need_w: bool = True,
) -> BackwardPlan:
    """Passes over the columns so the partial planes stay under ``cap_bytes``, and a split of the
    outputs when one pass's B×K tiles are fewer than ``target_programs``.

    :param target_programs: programs that keep the device busy (a few per multiprocessor).
    :param cap_bytes: the most bytes of partial planes one pass may hold (at least one BLOCK_K of
        columns is done per pass, whatever the cap).
    :raises ValueError: for a size below 1.
    """
    _check_sizes(batch, outputs, inputs)
    b_groups = cdiv(batch, tiles.block_b)
    o_blocks = cdiv(outputs, tiles.block_o)
    columns = _columns_per_pass(batch, outputs, inputs, tiles, 1, cap_bytes, need_x, need_w)
    tiles_bk = b_groups * cdiv(columns, tiles.block_k)
    slices = 1
    if tiles_bk < target_programs:
        slices = max(1, min(cdiv(target_programs, tiles_bk), o_blocks // MIN_O_BLOCKS_PER_SLICE))
    per_slice = cdiv(o_blocks, slices) * tiles.block_o
    slices = cdiv(outputs, per_slice)
    if slices > 1:  # its grad_x planes take a share of the cap too
        columns = _columns_per_pass(batch, outputs, inputs, tiles, slices, cap_bytes, need_x, need_w)
    return BackwardPlan(o_slices=slices, o_per_slice=per_slice, k_per_pass=columns, b_groups=b_groups)
