"""Built-in plugin: the l_inf-dist net (Zhang et al., ICML 2021) and the l_p-dist benchmarks.

Registers the ``linf_dist_net`` model (:mod:`.models`; ``linf_v1`` and
``linf_v2`` train it, naming it by that registered name) and the commands
``harness bench dist`` and ``harness bench dist-step`` (:mod:`.bench`; the host's
``harness bench step`` profiles a whole trainer's step). The
operation and layers themselves are library code, :mod:`harness_plugins.lib.lpdist`.
"""

from __future__ import annotations

import math

import click

from harness import hookimpl
from harness.commands import UsageError, device_option, resolve_device, text_table


def _p(text: str) -> float:
    value = math.inf if text.strip().lower() in ("inf", "infinity") else float(text)
    if not value >= 1:
        raise click.BadParameter(f"{text!r} is not a p >= 1 (or inf)")
    return value


@hookimpl
def register_models():
    from harness_plugins.lpdist.models import LinfDistNetModel

    return [LinfDistNetModel]


@hookimpl
def register_commands(cli: click.Group) -> None:
    bench = cli.commands["bench"]

    @bench.command("dist")
    @click.option("--paper", is_flag=True, help="The paper's shapes: B=512; 784→5120, 3072→5120, 5120→5120, 5120→10.")
    @device_option
    @click.option("--p", "p_values", multiple=True, metavar="P", help="Values of p (repeatable; default 8, 9.5, 24, 64, 1000, inf).")
    @click.option("--repeat", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed calls per measurement (the median is kept).")
    @click.option("--shape", "shapes", multiple=True, metavar="B,IN,OUT", help="Custom shapes instead (repeatable).")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
    def dist(paper: bool, device: str, p_values: tuple[str, ...], repeat: int, shapes: tuple[str, ...], as_json: bool) -> None:
        """Time the l_p-dist layer against torch.cdist and the naive broadcast.

        Forward and forward+backward, side by side in one run, for p ∈ {8, 9.5, 24, 64, 1000, ∞}, on a
        CPU-sized set (B=256; 784→1024, 1024→1024) or the paper's shapes (--paper); the table is
        followed by each p's forward+backward time over p = 8's.

        \b
        Examples:
          harness bench dist
          harness bench dist --paper --device cuda --json
        """
        import sys

        from harness_plugins.lpdist import bench as b

        try:
            ps = [_p(v) for v in p_values] if p_values else b.P_VALUES
        except (ValueError, click.BadParameter):
            raise UsageError(f"--p must be numbers >= 1 or inf, got {', '.join(p_values)}") from None
        try:
            custom = [tuple(int(v) for v in s.split(",")) for s in shapes]
        except ValueError:
            custom = []
        if len(custom) != len(shapes) or not all(len(s) == 3 and min(s) >= 1 for s in custom):
            raise UsageError(f"--shape takes B,IN,OUT with positive integers, got {', '.join(shapes)}")
        target = resolve_device(device)
        shapes = custom or (b.PAPER_SHAPES if paper else b.CPU_SHAPES)
        say = (lambda m: print(f"  {m}", file=sys.stderr, flush=True)) if not as_json else (lambda m: None)
        peaks = None if as_json else b.native_peaks(target)
        records = b.run(shapes, ps, target, repeat, progress=say)
        if as_json:
            click.echo(b.to_json(records))
        else:
            click.echo(b.table(records))
            click.echo(b.p8_ratios(records))
            shares = b.peak_lines(records, peaks)
            if shares:
                click.echo(shares)

    @bench.command("dist-step")
    @device_option
    @click.option("--depth", type=click.IntRange(2), default=6, show_default=True)
    @click.option("--width", type=click.IntRange(1), default=5120, show_default=True)
    @click.option("--input", "inp", type=click.IntRange(1), default=3072, show_default=True)
    @click.option("--batch", type=click.IntRange(1), default=512, show_default=True)
    @click.option("--repeat", type=click.IntRange(1, 1000), default=5, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
    def dist_step(device: str, depth: int, width: int, inp: int, batch: int, repeat: int, as_json: bool) -> None:
        """Time one training step of a bare l_inf-dist net (cross-entropy, Adam) at p = 8, general p and p = ∞.

        The defaults are the paper's CIFAR-10 net (6 × 5120 units, batch 512); the original
        kernels' published times on an RTX 3090 are printed beside ours. `harness bench step`
        times a trainer's whole step instead (its loss, its bounds), split into parts.

        \b
        Examples:
          harness bench dist-step --device cuda
          harness bench dist-step --device cpu --width 1024 --input 784 --depth 5 --batch 256
        """
        import json as json_module

        from harness_plugins.lpdist import bench as b

        rows = b.training_step(resolve_device(device), depth, width, inp, 10, batch, repeat)
        paper = (depth, width, inp, batch) == (6, 5120, 3072, 512)
        if not paper:  # the published times are for the paper's net only
            for r in rows:
                r["original_rtx3090_s"] = None
        if as_json:
            click.echo(json_module.dumps(rows, indent=2))
            return
        table = []
        for r in rows:
            original = r["original_rtx3090_s"]
            table.append([r["p"], f"{r['seconds']:.4f}", "—" if original is None else f"{original:.2f}",
                          "—" if original is None else f"{original / r['seconds']:.2f}", r["backend"], r["device"]])
        click.echo(f"{depth} x {width} l_inf-dist net, input {inp}, batch {batch}")
        click.echo(text_table(["p", "seconds/step", "original (RTX 3090)", "original / ours", "backend", "device"], table))
