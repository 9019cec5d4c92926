"""``harness sweep``: the command line of sweeps (only click is imported until it runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from harness.commands import format_option
from harness.errors import UsageError


@click.command("sweep")
@click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path), required=False, metavar="[SPEC.toml]")
@click.option("--plugin", "plugins", default=None, metavar="NAME[,NAME]", help="Quick form: the trainers, a comma list.")
@click.option("--dataset", "datasets", default=None, metavar="NAME[,NAME]", help="Quick form: the datasets, a comma list.")
@click.option("--eps", default=None, metavar="EPS[,EPS]", help="Quick form: the radii, a comma list (0.1,0.3 or 2/255,8/255).")
@click.option("--norm", default=None, metavar="inf|2", help="Quick form: the norm of every radius. Default: each preset's.")
@click.option("--preset", "presets", default=None, metavar="NAME[,NAME]", help="Quick form: the presets, a comma list.")
@click.option("--seeds", default=None, metavar="N|S,S", help="Quick form: seeds 0..N-1 (--seeds 3), or a list (--seeds 1,2,5).")
@click.option("--epochs", type=int, default=None, help="Quick form: override every run's epochs.")
@click.option("--train-samples", type=int, default=None, help="Quick form: train on a fixed subset of N samples.")
@click.option("--eval-samples", type=int, default=None, help="Quick form: evaluate on a fixed subset of N samples.")
@click.option("--attack", "attacks", multiple=True, metavar="NAME", help="Quick form: only these attacks (repeatable).")
@click.option("--certifier", "certifiers", multiple=True, metavar="NAME", help="Quick form: only these certifiers (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Quick form: override an option in every run.")
@click.option("--gpus", type=click.FloatRange(0), default=0, show_default=True, help="Quick form: GPUs per run (a run with none runs on the CPU).")
@click.option("--cpus", type=click.FloatRange(0), default=1, show_default=True, help="Quick form: CPUs per run (its torch threads).")
@click.option("--nproc", type=click.IntRange(1), default=None, metavar="N",
              help="Quick form: processes per run (harness run --nproc), one per GPU. Default: --gpus when it is 2 or more, else 1.")
@click.option("--name", default=None, help="Quick form: the sweep's name (its log folder). Default: quick-HASH of its cells.")
@click.option("--status", "show_status", is_flag=True, help="Show every cell's state from the database; run nothing.")
@click.option("--dry-run", is_flag=True, help="Show the plan and every cell's state; run nothing.")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
              help="Retry a failed cell while its run was resumed fewer times than this (also Ray's retries of a lost task).")
@click.option("--retry-failed", is_flag=True, help="Try the cells that failed --retries times once more.")
@click.option("--address", envvar="RAY_ADDRESS", default=None, metavar="HOST:PORT",
              help="Run on this Ray cluster [env RAY_ADDRESS]. Default: a local Ray instance with all of this machine.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="HARNESS_DATA", default=None,
              help="Data folder, the same path on every node [env HARNESS_DATA; default ~/.cache/harness/data].")
@click.option("--save-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Runs' weights and checkpoints (run-ID/) and the sweep's logs (sweeps/NAME/CELL.log).")
@click.option("--db", envvar="HARNESS_DB", default="results.db", show_default=True, metavar="URL",
              help="Results database: a SQLAlchemy URL or a SQLite file path [env HARNESS_DB]; every node must reach it.")
@format_option(("table", "json"))
def sweep(spec_file: Path | None, show_status: bool, dry_run: bool, retries: int, retry_failed: bool, address: str | None,
          data_dir: Path | None, save_dir: Path, db: str, fmt: str, **quick: Any) -> None:
    """Run a matrix of runs (plugins x datasets x threat models x presets x seeds) as Ray tasks.

    Every cell is planned first (a bad value stops the sweep before anything
    runs); the plan says how many cells are finished, to resume, to retry or
    new. A finished cell is skipped, an interrupted or stale one resumed, a
    failed one retried up to --retries times. Rerunning a sweep runs what is
    left. Without Ray installed, the cells run one after another here.

    \b
    Examples:
      harness sweep sweep.toml
      harness sweep --plugin linf_v2,linf_v1 --dataset mnist --eps 0.1,0.3 --seeds 3 --preset quick
      harness sweep sweep.toml --status
      harness sweep sweep.toml --address 10.0.0.1:6379 --db postgresql://harness@10.0.0.1/harness
    """
    from harness.cli import state
    from harness.store import open_store
    from harness.sweep import driver, report
    from harness.sweep.spec import quick_spec, read_spec
    from harness.sweep.state import survey

    ctx = click.get_current_context()
    given = [max(p.opts, key=len) for p in ctx.command.params
             if p.name in quick and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if spec_file is not None:
        if given:
            raise UsageError(f"{given[0]} is a quick-form option: give the matrix in {spec_file} or on the command line, not both")
        spec = read_spec(spec_file)
    else:
        for flag, key in (("--plugin", "plugins"), ("--dataset", "datasets")):
            if quick[key] is None:
                raise UsageError(f"give a spec file (harness sweep SPEC.toml) or the quick form's {flag} (e.g. {flag} linf_v2,linf_v1)")
        spec = quick_spec(**quick)
    s = state()
    if show_status or dry_run:
        # Read-only, and a database not created yet is no error: every cell is new.
        store = open_store(db, readonly=True) if "://" in db or Path(db).exists() else None
    else:
        store = open_store(db)  # created here, before any task opens it
    try:
        if show_status:
            click.echo(report.status_table(spec, survey(spec.cells, store, retries=retries, retry_failed=retry_failed), fmt))
            return
        summary = driver.run_sweep(
            spec, store, db, catalog=s.catalog, versions=s.plugins.versions(), plugins=s.plugins.names(), save_dir=save_dir,
            data_dir=data_dir, address=address, retries=retries, retry_failed=retry_failed, dry_run=dry_run, echo=click.echo,
        )
    finally:
        if store is not None:
            for line in store.warnings:
                click.echo(f"warning: {line}", err=True)
            store.close()
    gave_up = [st for st in summary.states if st.action == driver.Action.GAVE_UP]
    if (summary.failed or gave_up) and not dry_run:
        raise driver.SweepFailed(
            f"{len(summary.failed) + len(gave_up)} cells of sweep {spec.name} failed; harness sweep --status shows why "
            "(each cell's log is under --save-dir/sweeps/)"
        )
