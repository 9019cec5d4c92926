"""The ``harness`` command line (click).

User errors are one line on stderr and exit status 2; ``--debug`` shows
tracebacks instead. A plugin that cannot be loaded is left out with one
warning line that says how to disable it; the other commands keep working.
Nothing heavy (torch, the plugins' components) is imported until a command
needs it, so ``harness --help`` is quick.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

# torch's OpenMP workers (libgomp) spin on the cores for a while after every parallel operation; the
# l_p-dist native kernels run on threads of their own and lost up to a third of their time to that
# spinning (the quick linf_v2 step, 2-core Xeon: p = 8 21.5 → 17.8 ms, general p 48.8 → 38.2 ms,
# p = ∞ 12.1 → 9.9 ms with a short spin; linf_mlp 71 → 41 ms at p = 8; crm within its noise). Read
# when libgomp loads, so set before torch is imported; a value in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from harness.commands import DEVICES, format_option
from harness.errors import HarnessDeprecationWarning, HarnessError, PluginError, UsageError, one_line
from harness.liveness import stale_reason
from harness.plugins import DISABLE_ENV, LoadedPlugins, load_plugins
from harness.store import STATUSES
from harness.threat import NORMS, format_eps, parse_eps, parse_norm

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.results import SampleResult
    from harness.runner import RunRequest
    from harness.store import RunRecord, Store

DEFAULT_DB = "results.db"


class _State:
    """Built once per process: the loaded plugins, and the catalog when a command needs it."""

    def __init__(self, plugins: LoadedPlugins | None = None) -> None:
        self.plugins: LoadedPlugins = plugins if plugins is not None else load_plugins()
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            from harness.catalog import Catalog

            self._catalog = Catalog.build(self.plugins)
        return self._catalog


_state: _State | None = None


def state() -> _State:
    global _state
    if _state is None:
        _state = _State()
    return _state


class RunFailed(HarnessError):
    """A run finished, but some of its certifiers or attacks failed (exit status 1)."""


# -- shared options ---------------------------------------------------------------------


class EpsType(click.ParamType):
    name = "EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return parse_eps(value)


class NormType(click.ParamType):
    name = "|".join(NORMS)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return parse_norm(value)


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        envvar="HARNESS_DB",
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help="Results database: a SQLAlchemy URL or a SQLite file path [env HARNESS_DB].",
    )(f)


def with_store(
    f: Callable[..., Any] | None = None, *, readonly: bool = False, lists: bool = False, existing_for: tuple[str, ...] = (),
    without: Callable[[dict[str, Any]], bool] | None = None,
) -> Any:
    """Open the ``--db`` store for the command (read-only for the read commands), print its warnings, close it afterwards.

    ``lists``: a command that lists runs gets ``store=None`` when the default
    database does not exist yet (nothing was recorded: an empty list, not an
    error); a database named with ``--db`` or ``$HARNESS_DB`` must exist.
    ``existing_for``: parameters (a run id) that, when given, need an existing
    SQLite file: a lookup that fails creates no database.
    ``without``: given the command's parameters, true when it must not open
    the store (gets ``store=None``): the launcher of a multi-process run, and
    its ranks other than 0.
    """

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @db_option
        @functools.wraps(f)
        def wrapper(db: str, **kwargs: Any) -> Any:
            from harness.store import open_store

            source = click.get_current_context().get_parameter_source("db")
            if lists and source == click.core.ParameterSource.DEFAULT and not Path(db).exists():
                return f(store=None, **kwargs)
            wanted = [kwargs[name] for name in existing_for if kwargs.get(name) is not None]
            if wanted and "://" not in db and not Path(db).exists():
                raise UsageError(f"no database at {db!r}, so no run {wanted[0]} (give --db, or harness run creates one)")
            if without is not None and without(kwargs):
                return f(store=None, **kwargs)
            store = open_store(db, readonly=readonly)
            try:
                return f(store=store, **kwargs)
            finally:
                for line in store.warnings:
                    click.echo(f"warning: {line}", err=True)
                store.close()

        return wrapper

    return decorate(f) if f is not None else decorate


# -- the group --------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="harness-bench", prog_name="harness")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Compare certified-robustness methods: same data, threat model, attacks and certifiers.

    \b
    Example:
      harness run --plugin linf_v2 --dataset mnist --preset quick
      harness leaderboard

    A plugin that fails to load is left out with a warning; disable one with
    HARNESS_DISABLE_PLUGINS=NAME[,NAME] (or load only some with HARNESS_ONLY_PLUGINS).
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--plugin", "trainer", default=None, metavar="NAME", help="The trainer (training method) to run; see `harness plugins`.")
@click.option("--dataset", default=None, metavar="NAME", help="Dataset (mnist, fashion-mnist, cifar10, ...).")
@click.option("--eps", type=EpsType(), default=None, help="Radius in [0,1] pixel units (0.3, 8/255). Default: the preset's.")
@click.option("--norm", type=NormType(), default=None, help="Threat-model norm. Default: the preset's (inf).")
@click.option("--preset", default=None, metavar="NAME",
              help="Preset name (e.g. quick, paper-0.3). Default: the paper's preset for --eps, else the dataset's default.")
@click.option("--no-preset", is_flag=True, help="Use no preset: the trainer's and model's default options (with --eps, and --set to change them).")
@click.option("--model", default=None, metavar="NAME", help="The model to train. Default: the preset's, else the trainer's.")
@click.option("--epochs", type=int, default=None, help="Override the number of epochs; the schedule scales with it.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Random seed. Default: the preset's (the paper's).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES), help="Training and evaluation device.")
@click.option("--eval-samples", type=int, default=None, help="Evaluate on a fixed, seeded subset of N test samples (the same for every run).")
@click.option("--eval-batch-size", type=int, default=500, show_default=True, help="Batch size of the evaluation.")
@click.option("--train-samples", type=int, default=None, help="Train on a fixed, seeded subset of N training samples (smoke tests).")
@click.option("--attack", "attacks", multiple=True, metavar="NAME", help="Run only these attacks (repeatable). Default: every attack for the norm.")
@click.option("--certifier", "certifiers", multiple=True, metavar="NAME",
              help="Run only these certifiers (repeatable). Default: every certifier that applies.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override an option: model.width=256, trainer.lr=0.01, attacker.pgd.steps=20.")
@click.option("--certifier-budget", "certifier_budget", multiple=True, metavar="[NAME=]SECONDS",
              help="Time budget of each certifier (SECONDS), or of one (NAME=SECONDS); repeatable. Samples it has not certified "
                   "when its budget is spent are time-outs, never certified. Default: none.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="HARNESS_DATA", default=None,
              help="Data folder [env HARNESS_DATA; default ~/.cache/harness/data].")
@click.option("--save-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Where the trained weights and config go (run-ID/).")
@click.option("--checkpoint-every", type=int, default=1, show_default=True, metavar="EPOCHS",
              help="Write a checkpoint every this many epochs (and at least every 30 minutes, and at the end).")
@click.option("--no-save", is_flag=True, help="Save neither checkpoints nor the trained weights (the run cannot be resumed).")
@click.option("--resume", "resume_id", type=click.IntRange(1, 2**63 - 1), default=None, metavar="RUN_ID",
              help="Continue an interrupted, failed or stale run from its last checkpoint, with its stored configuration.")
@click.option("--nproc", type=click.IntRange(1, 4096), default=None, metavar="N",
              help="Train and evaluate in N processes: one per GPU with --device cuda (NCCL), else N CPU processes (gloo). "
                   "Under torchrun: its WORLD_SIZE.")
@click.option("--batch-stats", type=click.Choice(["exact", "local"]), default=None,
              help="With --nproc: batch statistics (mean shift) over the global batch (exact, default: N processes train as one) "
                   "or over each process's slice (local: the original code under DDP).")
@with_store(existing_for=("resume_id",), without=lambda kwargs: _not_rank_0(kwargs.get("nproc")))
def run(store: Store | None, no_save: bool, resume_id: int | None, attacks: tuple[str, ...], certifiers: tuple[str, ...],
        nproc: int | None, batch_stats: str | None, **options: Any) -> None:
    """Train with a trainer (--plugin), evaluate the model uniformly and record the run (--nproc N: in N processes).

    Training writes a checkpoint to the run's directory every epoch (and at
    least every 30 minutes); SIGTERM, SIGINT and SIGHUP finish the current
    step, write one and record the run interrupted. --resume RUN_ID continues
    it (only --db, --data-dir and --device may be given with it).

    Components from two plugins with the same name are addressed as
    PLUGIN:NAME (--attack toy:fgsm, --set attacker.toy:fgsm.steps=3).

    \b
    Examples:
      harness run --plugin linf_v2 --dataset mnist --preset quick
      harness run --plugin linf_v2 --dataset mnist --eps 0.3        # the paper's preset
      harness run --plugin linf_v2 --dataset cifar10 --epochs 20 --set model.width=1024
      harness run --plugin crm --dataset fashion-mnist --no-preset --norm 2 --eps 1.0 --certifier liplt
      harness run --plugin linf_v2 --dataset mnist --preset quick --certifier-budget crown=600
      harness run --resume 7                                         # continue run 7
      harness run --plugin linf_v2 --dataset cifar10 --nproc 4 --device cuda
      torchrun --nproc-per-node 4 -m harness.cli run --plugin linf_v2 --dataset cifar10 --device cuda
    """
    from harness import distributed

    size = distributed.env_world_size()
    if batch_stats is not None and size == 1 and (nproc or 1) == 1 and resume_id is None:
        raise UsageError(f"--batch-stats {batch_stats} needs a multi-process run: --nproc N with N > 1 (or torchrun)")
    if size == 1 and nproc is None and resume_id is not None and store is not None:  # as many processes as it started with
        stored = store.get_run(resume_id).info.config
        ran = stored.get("distributed") if isinstance(stored, dict) else None
        _check_resumed_processes(resume_id, ran, batch_stats, None)
        if isinstance(ran, dict) and isinstance(ran.get("world_size"), int) and ran["world_size"] > 1:
            nproc, batch_stats = ran["world_size"], batch_stats or ran.get("batch_stats")
    if size == 1 and nproc is not None and nproc > 1 and options["device"] == "cuda":
        import torch

        if torch.cuda.device_count() < nproc:  # refused here, once, rather than by every rank at once
            raise UsageError(f"--nproc {nproc} --device cuda needs {nproc} GPUs (one per process); this machine has "
                             f"{torch.cuda.device_count()} (lower --nproc, or --device cpu)")
    if size == 1 and nproc is not None and nproc > 1:  # the launcher: N copies of this command
        args = _ARGV if _ARGV is not None else sys.argv[1:]
        if "--nproc" not in args and not any(a.startswith("--nproc=") for a in args):
            args = [*args, "--nproc", str(nproc)]
        args, db = _database_out_of(args)  # to the ranks through their environment: a URL's password stays off `ps`
        code = distributed.launch(nproc, args, batch_stats=batch_stats or "exact", env={"HARNESS_DB": db} if db is not None else None)
        if code:
            raise click.exceptions.Exit(code)
        return
    if size > 1 and nproc is not None and nproc != size:
        raise UsageError(f"--nproc {nproc} does not match WORLD_SIZE={size} (torchrun's --nproc-per-node × nodes)")
    if size > 1 and batch_stats is not None:
        os.environ[distributed.BATCH_STATS_ENV] = batch_stats
    world = distributed.init(options["device"]) if size > 1 else None
    try:
        _run(store, no_save, resume_id, attacks, certifiers, world, batch_stats, options)
    finally:
        distributed.shutdown()


def run_request(no_save: bool, attacks: Sequence[str], certifiers: Sequence[str], options: dict[str, Any]) -> RunRequest:
    """The RunRequest of ``harness run``'s parsed options (:func:`harness.runner.run_arguments` is its inverse)."""
    from harness.budget import Budgets
    from harness.runner import RunRequest

    return RunRequest(
        attacks=list(attacks) or None,
        certifiers=list(certifiers) or None,
        save_dir=None if no_save else options["save_dir"],
        certifier_budget=Budgets.parse(options.get("certifier_budget", ())),
        **{k: v for k, v in options.items() if k not in ("save_dir", "certifier_budget")},
    )


def _run(store: Store | None, no_save: bool, resume_id: int | None, attacks: tuple[str, ...], certifiers: tuple[str, ...],
         world: Any, batch_stats: str | None, options: dict[str, Any]) -> None:
    from harness import distributed
    from harness.execution import execute
    from harness.progress import ConsoleProgress, SilentProgress
    from harness.runner import plan_resume, plan_run

    s = state()
    resume = None
    if resume_id is not None:
        allowed = ("resume_id", "device", "data_dir", "nproc", "batch_stats")
        _refuse_with_resume(click.get_current_context(), resume_id, allowed=allowed)
        if store is not None:  # rank 0 (or the only process) reads the run and tells the others
            try:
                resume = store.get_run(resume_id)
            except BaseException as exc:
                distributed.broadcast_object(("error", one_line(exc)))
                raise
            distributed.broadcast_object(("ok", resume))
        else:
            status, told = distributed.broadcast_object(None)
            if status != "ok":
                raise UsageError(told)
            resume = told
        ran = resume.info.config.get("distributed") if isinstance(resume.info.config, dict) else None
        if world is not None and batch_stats is None and isinstance(ran, dict) and ran.get("batch_stats"):
            world = distributed.use_batch_stats(ran["batch_stats"])  # under torchrun: the statistics it started with
        _check_resumed_processes(resume_id, ran, batch_stats, world.size if world is not None else 1)  # every rank alike
        plan = plan_resume(s.catalog, resume, s.plugins.versions(), device=_given(click.get_current_context(), "device"),
                           data_dir=options["data_dir"])
    else:
        for flag, value in (("--plugin", options["trainer"]), ("--dataset", options["dataset"])):
            if value is None:
                raise click.UsageError(f"Missing option '{flag}' (or --resume RUN_ID).")
        plan = plan_run(s.catalog, run_request(no_save, attacks, certifiers, options), s.plugins.versions())
    if store is None:  # a rank other than 0: trains and evaluates its share, records and prints nothing
        execute(plan, None, progress=SilentProgress(), resume=resume, world=world)
        return
    _warn_about_problems(s.catalog)
    run_id = execute(plan, store, progress=ConsoleProgress(), resume=resume, world=world)
    record = store.get_run(run_id)
    from harness import render

    click.echo(render.run_summary(record))
    click.echo(f"details: harness show {run_id}    table: harness leaderboard --dataset {record.info.dataset}")
    errors = record.result.errors if record.result else []
    if errors:
        raise RunFailed(f"run {run_id} finished, but {len(errors)} of its components failed: " + "; ".join(errors))


@cli.command("eval")
@click.argument("run_id", type=click.IntRange(1, 2**63 - 1), required=False)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Evaluate a model trained elsewhere: a state dict (or a harness model.pt) for --model.")
@click.option("--model", default=None, metavar="NAME", help="With --weights: the registered model the state dict is for.")
@click.option("--dataset", default=None, metavar="NAME", help="With --weights: the dataset.")
@click.option("--eps", type=EpsType(), default=None, help="With --weights: the radius in [0,1] pixel units.")
@click.option("--norm", type=NormType(), default="inf", show_default=True, help="With --weights: the threat-model norm.")
@click.option("--attack", "attacks", multiple=True, metavar="NAME", help="Run only these attacks (repeatable). Default: every attack for the norm.")
@click.option("--certifier", "certifiers", multiple=True, metavar="NAME",
              help="Run only these certifiers (repeatable). Default: every certifier that applies.")
@click.option("--eval-samples", type=int, default=None, help="Evaluate on the fixed, seeded subset of N test samples.")
@click.option("--eval-batch-size", type=int, default=500, show_default=True, help="Batch size of the evaluation.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override an attack's or certifier's option (attacker.pgd.steps=20); with --weights also model.KEY.")
@click.option("--certifier-budget", "certifier_budget", multiple=True, metavar="[NAME=]SECONDS",
              help="Time budget of each certifier (SECONDS), or of one (NAME=SECONDS); repeatable. Samples it has not certified "
                   "when its budget is spent are time-outs, never certified. Default: none.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES), help="Evaluation device.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="HARNESS_DATA", default=None,
              help="Data folder [env HARNESS_DATA; default ~/.cache/harness/data].")
@with_store(existing_for=("run_id",))
def evaluate(store: Store, run_id: int | None, weights: Path | None, model: str | None, dataset: str | None, eps: float | None,
             norm: str, attacks: tuple[str, ...], certifiers: tuple[str, ...], **options: Any) -> None:
    """Evaluate a stored model again (a new evaluation of RUN_ID), or a model trained elsewhere (--weights).

    The run's weights are checked against the sha256 recorded when they were
    saved. Earlier evaluations stay; the leaderboard shows each model once,
    with its most complete evaluation, and `harness show RUN_ID` lists them all.

    \b
    Examples:
      harness eval 3                                   # every attack and certifier installed now
      harness eval 3 --certifier crown --eval-samples 1000
      harness eval 3 --certifier-budget 60 --certifier-budget crown=3600
      harness eval --weights net.pt --model linf_dist_net --dataset mnist --eps 0.3 --set model.width=128
    """
    from harness import reevaluation, render
    from harness.budget import Budgets
    from harness.progress import ConsoleProgress
    from harness.threat import ThreatModel

    s = state()
    budget = Budgets.parse(options.pop("certifier_budget"))
    request = reevaluation.EvaluationRequest(attacks=list(attacks) or None, certifiers=list(certifiers) or None,
                                             certifier_budget=budget, **options)
    external = {"--weights": weights, "--model": model, "--dataset": dataset, "--eps": eps}
    if run_id is not None:
        given = [flag for flag, value in external.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]} cannot be given with RUN_ID {run_id}: a stored model keeps its model, data and threat model")
        plan = reevaluation.plan_stored(s.catalog, store.get_run(run_id), request, s.plugins.versions())
    else:
        missing = [flag for flag, value in external.items() if value is None]
        if len(missing) == len(external):
            raise click.UsageError("give RUN_ID (a stored model) or --weights FILE --model NAME --dataset NAME --eps EPS")
        if missing:
            raise click.UsageError(f"Missing option '{missing[0]}': --weights needs --model, --dataset and --eps.")
        plan = reevaluation.plan_external(
            s.catalog, Path(str(weights)), str(model), str(dataset), ThreatModel(norm, float(eps or 0)), request, s.plugins.versions()
        )
    _warn_about_problems(s.catalog)
    run_id, evaluation_id = reevaluation.execute_evaluation(plan, store, progress=ConsoleProgress())
    record = store.get_run(run_id)
    done = next(e for e in record.evaluations if e.id == evaluation_id)
    click.echo(render.evaluation_summary(record, done))
    click.echo(f"details: harness show {run_id}")
    if done.result.errors:
        raise RunFailed(f"evaluation {evaluation_id} of run {run_id} finished, but {len(done.result.errors)} of its components failed: "
                        + "; ".join(done.result.errors))


@cli.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@with_store
def import_results(store: Store, path: Path) -> None:
    """Record the results a run could not record (its results.json) in the database.

    A run whose database was locked, full, deleted or replaced writes its
    results beside its weights and says so; this records them, in the same
    run if the database still has it running, else as a new run.

    \b
    Example:
      harness import runs/run-7/results.json
    """
    from harness.importing import import_pending
    from harness.results_file import read_pending

    run_id, how = import_pending(store, read_pending(path))
    click.echo(f"imported {path} as run {run_id} ({how}); harness show {run_id}")


def _check_resumed_processes(run_id: int, ran: Any, given: str | None, size: int | None) -> None:
    """A resumed run keeps its batch statistics, and with ``local`` ones its process count (``size``; ``None``: not known
    yet), which they depend on: anything else is a UsageError (the run would be half one model, half another)."""
    then = ran.get("batch_stats") if isinstance(ran, dict) else None
    mode = then if isinstance(then, str) else "exact"
    then_size = ran.get("world_size", 1) if isinstance(ran, dict) else 1
    if given is not None and given != mode:
        raise UsageError(f"run {run_id} trained with --batch-stats {mode}" + (f" in {then_size} processes" if then_size != 1 else
                         " in one process") + ": resume it with those (leave --batch-stats out)")
    if size is not None and mode != "exact" and size != then_size:
        raise UsageError(f"run {run_id} trained with --batch-stats {mode} in {then_size} processes, which they depend on: "
                         f"resume it with --nproc {then_size} (or leave --nproc out)")


def _database_out_of(args: list[str]) -> tuple[list[str], str | None]:
    """``args`` without their ``--db URL`` (or ``--db=URL``), and that URL (the last one given, as click takes it)."""
    kept: list[str] = []
    db = None
    tokens = iter(args)
    for token in tokens:
        if token == "--db":
            db = next(tokens, None)
        elif token.startswith("--db="):
            db = token.removeprefix("--db=")
        else:
            kept.append(token)
    return kept, db


def _not_rank_0(nproc: int | None) -> bool:
    """True for the launcher of ``--nproc N`` and for the ranks other than 0 (none of them opens the store)."""
    rank = os.environ.get("RANK", "0")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return rank != "0"
    return nproc is not None and nproc > 1


def _given(ctx: click.Context, name: str) -> Any:
    """A parameter's value if the user gave it (command line or environment), else ``None``."""
    source = ctx.get_parameter_source(name)
    return ctx.params.get(name) if source not in (None, click.core.ParameterSource.DEFAULT) else None


def _refuse_with_resume(ctx: click.Context, run_id: int, allowed: tuple[str, ...]) -> None:
    """``--resume`` continues a run as it was configured: an option that would change it is a UsageError."""
    for param in ctx.command.params:
        if param.name in allowed or param.name == "db" or ctx.get_parameter_source(param.name or "") != click.core.ParameterSource.COMMANDLINE:
            continue
        flag = max(param.opts, key=len) if param.opts else param.name
        raise UsageError(
            f"{flag} cannot be given with --resume {run_id}: a resumed run keeps its stored configuration "
            "(only --db, --data-dir and --device may be given)"
        )


def _warn_about_problems(catalog: Catalog) -> None:
    # Plugins that failed to load were already named, one line each, at start-up.
    others = [p for p in catalog.problems if not p.load_failure]
    if others:
        click.echo(f"warning: {len(others)} problem(s) in the installed plugins left components out (harness plugins --check lists them)", err=True)


@cli.command()
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--norm", type=NormType(), default=None, help="Only this norm.")
@click.option("--eps", type=EpsType(), default=None, help="Only this radius (0.3, 8/255).")
@click.option("--reported", "reported_rows", type=click.Choice(["runs", "all", "none"]), default="runs", show_default=True,
              help="Numbers reported in papers: beside measured runs, for every setting, or none.")
@click.option("--per-seed", is_flag=True, help="A row for every run, instead of one row (mean ± std) for runs that differ only by seed.")
@click.option("--at-eps", type=EpsType(), default=None, metavar="RADIUS",
              help="Also certified accuracy at this radius (0.2, 8/255), from each run's stored per-sample radii; "
                   "runs whose certifiers store none show n/a.")
@format_option(("table", "markdown", "csv", "json"))
@with_store(readonly=True, lists=True)
def leaderboard(
    store: Store | None, dataset: str | None, norm: str | None, eps: float | None, reported_rows: str, per_seed: bool,
    at_eps: float | None, fmt: str,
) -> None:
    """Finished runs grouped by (dataset, norm, eps), ranked by mean certified accuracy.

    Runs that differ only by seed are one row: mean ± sample standard deviation
    (n runs) of each accuracy; --per-seed shows every run apart. Numbers
    reported in papers are shown beside them, marked "reported". Each row shows
    its certifiers' time-outs and per-sample errors (never certified), training
    and evaluation time, paper-protocol estimates apart from the certified
    numbers, and "!" after the attack number when the gradient-masking check
    flagged the run.

    \b
    Examples:
      harness leaderboard
      harness leaderboard --dataset cifar10 --eps 8/255 --format markdown
      harness leaderboard --reported all     # also the papers' numbers for settings not run yet
      harness leaderboard --per-seed --format json
      harness leaderboard --dataset mnist --at-eps 0.2
    """
    from harness import leaderboard as lb
    from harness import render

    if at_eps is not None and at_eps < 0:
        raise UsageError(f"--at-eps {format_eps(at_eps)}: a radius is >= 0")
    runs = store.list_runs(status="finished", dataset=dataset, norm=norm, eps=eps) if store else []
    catalog = state().catalog
    if dataset is not None and not runs:
        _check_dataset(dataset, store, catalog.names("dataset"))
    groups = lb.build(runs, catalog.reported, dataset=dataset, norm=norm, eps=eps, reported_rows=reported_rows, per_seed=per_seed,
                      at_eps=at_eps, samples=None if at_eps is None else functools.partial(_best_samples, store))
    if not groups and fmt in ("table", "markdown"):
        filters = _filters(dataset=dataset, norm=norm, eps=None if eps is None else format_eps(eps))
        click.echo(render.nothing_matches(store.list_runs() if store else [], filters, finished=True))
        return
    click.echo(render.leaderboard(groups, fmt))


def _best_samples(store: Store | None, run: RunRecord) -> list[SampleResult]:
    """The per-sample results of the evaluation the leaderboard shows for ``run`` (its best)."""
    return store.samples(run.id, run.best.id if run.best else None) if store is not None else []


@cli.group()
def plot() -> None:
    """Figures from stored runs, written to a file (.png, .svg or .pdf).

    \b
    Examples:
      harness plot radius 3 4 --out radius.png
      harness plot tradeoff --dataset mnist --eps 0.3 --out tradeoff.svg
    """


def out_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
                        help="The figure's file: .png, .svg or .pdf (default: a name in the working directory, printed).")(f)


@plot.command("radius")
@click.argument("run_ids", nargs=-1, required=True, type=click.IntRange(1, 2**63 - 1), metavar="RUN...")
@out_option
@with_store(readonly=True)
def plot_radius(store: Store, run_ids: tuple[int, ...], out: Path | None) -> None:
    """Certified accuracy against the radius: one line per run, from its stored per-sample radii.

    A sample counts at radius r when it is classified correctly and a sound
    certifier proved a radius above r for it, or certified it at the run's eps
    and r is no larger. Each run's attack accuracy at its eps is marked (half filled),
    and the accuracies its paper reports for the trainer (hollow markers).

    \b
    Examples:
      harness plot radius 3
      harness plot radius 3 4 5 --out radius.pdf
    """
    from harness import plots

    path = plots.output_path(out, plots.default_name("radius", *map(str, run_ids)))
    records = [store.get_run(run_id) for run_id in dict.fromkeys(run_ids)]
    figure = plots.radius_figure([(r, _best_samples(store, r)) for r in records], state().catalog.reported)
    click.echo(f"wrote {plots.save(figure, path)}")


@plot.command("tradeoff")
@click.option("--dataset", required=True, metavar="NAME", help="The dataset.")
@click.option("--eps", type=EpsType(), required=True, help="The radius (0.3, 8/255).")
@click.option("--norm", type=NormType(), default=None, help="The norm (needed only when runs of both norms have this eps).")
@click.option("--reported", "reported_rows", type=click.Choice(["runs", "all", "none"]), default="runs", show_default=True,
              help="Numbers reported in papers: when there are measured runs, always, or never.")
@out_option
@with_store(readonly=True, lists=True)
def plot_tradeoff(store: Store | None, dataset: str, eps: float, norm: str | None, reported_rows: str, out: Path | None) -> None:
    """Clean against certified accuracy for one threat model: one point per leaderboard row.

    Runs that differ only by seed are one point with ± one standard deviation
    error bars; papers' reported numbers are hollow markers.

    \b
    Examples:
      harness plot tradeoff --dataset mnist --eps 0.3
      harness plot tradeoff --dataset cifar10 --eps 8/255 --out tradeoff.svg
    """
    from harness import leaderboard as lb
    from harness import plots, render

    if out is not None:
        plots.output_path(out, "")  # a bad file type is refused before any work
    runs = store.list_runs(status="finished", dataset=dataset, norm=norm, eps=eps) if store else []
    catalog = state().catalog
    if not runs:
        _check_dataset(dataset, store, catalog.names("dataset"))
    groups = lb.build(runs, catalog.reported, dataset=dataset, norm=norm, eps=eps, reported_rows=reported_rows)
    if not groups:
        filters = _filters(dataset=dataset, norm=norm, eps=format_eps(eps))
        raise UsageError(render.nothing_matches(store.list_runs() if store else [], filters, finished=True))
    if len(groups) > 1:
        norms = ", ".join(sorted(g.norm for g in groups))
        raise UsageError(f"runs on {dataset} at eps {format_eps(eps)} have norms {norms}: give --norm")
    (group,) = groups
    path = plots.output_path(out, plots.default_name("tradeoff", group.dataset, f"l{group.norm}", format_eps(group.eps)))
    click.echo(f"wrote {plots.save(plots.tradeoff_figure(group), path)}")


def _filters(**given: str | None) -> list[str]:
    """The filters given, as typed on the command line: ``["--dataset cifar10", "--eps 8/255"]``."""
    return [f"--{name} {value}" for name, value in given.items() if value is not None]


def _check_dataset(dataset: str, store: Store | None, registered: list[str]) -> None:
    """A ``--dataset`` filter that matches nothing: a UsageError if no run and no plugin knows the name (a typo)."""
    from harness.errors import unknown_name

    known = {r.info.dataset for r in (store.list_runs() if store else [])} | set(registered)
    if dataset not in known:
        raise unknown_name("dataset", dataset, known)


@cli.command()
@click.argument("run_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--samples", "n_samples", type=click.IntRange(0), default=0, help="Also list the first N per-sample results.")
@format_option(("table", "json"))
@with_store(readonly=True)
def show(store: Store, run_id: int, n_samples: int, fmt: str) -> None:
    """Everything stored about one run: configuration, environment, results, and why certifiers did not apply.

    \b
    Examples:
      harness show 1
      harness show 1 --samples 20
      harness show 1 --format json
    """
    from harness import render

    record = store.get_run(run_id)
    samples = store.samples(run_id)[:n_samples] if n_samples else []
    if fmt == "json":
        click.echo(json.dumps(render.run_json(record, samples), indent=2))
    else:
        click.echo(render.run_details(record, samples, stale=stale_reason(record)))


@cli.command()
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only runs with this status.")
@click.option("--dataset", default=None, help="Only this dataset.")
@with_store(readonly=True, lists=True)
def runs(store: Store | None, status: str | None, dataset: str | None) -> None:
    """List recorded runs, whatever their status.

    \b
    Example:
      harness runs --status failed
    """
    from harness import render

    records = store.list_runs(status=status, dataset=dataset) if store else []
    if not records:
        if dataset is not None:
            _check_dataset(dataset, store, state().catalog.names("dataset"))
        everything = store.list_runs() if store else []
        click.echo(render.nothing_matches(everything, _filters(status=status, dataset=dataset), finished=False))
        return
    click.echo(render.run_list(records, stale=stale_reason))


# -- export -----------------------------------------------------------------------------------------------------


@cli.group()
def export() -> None:
    """Write the leaderboard to files: a static HTML site, or one markdown, CSV or JSON file.

    \b
    Examples:
      harness export html board/              # then open board/index.html: no server, no network
      harness export csv leaderboard.csv --dataset mnist
    """


def _board_filters(f: Callable[..., Any]) -> Callable[..., Any]:
    """The leaderboard's filters, shared by every export."""
    for option in reversed((
        click.option("--dataset", default=None, help="Only this dataset."),
        click.option("--norm", type=NormType(), default=None, help="Only this norm."),
        click.option("--eps", type=EpsType(), default=None, help="Only this radius (0.3, 8/255)."),
        click.option("--reported", "reported_rows", type=click.Choice(["runs", "all", "none"]), default="runs", show_default=True,
                     help="Numbers reported in papers: beside measured runs, for every setting, or none."),
        click.option("--at-eps", type=EpsType(), default=None, metavar="RADIUS",
                     help="Also certified accuracy at this radius (0.2, 8/255), from each run's stored per-sample radii."),
    )):
        f = option(f)
    return f


def _finished_runs(store: Store | None, dataset: str | None, norm: str | None, eps: float | None, at_eps: float | None) -> list[Any]:
    if at_eps is not None and at_eps < 0:
        raise UsageError(f"--at-eps {format_eps(at_eps)}: a radius is >= 0")
    runs = store.list_runs(status="finished", dataset=dataset, norm=norm, eps=eps) if store else []
    if dataset is not None and not runs:
        _check_dataset(dataset, store, state().catalog.names("dataset"))
    return runs


@export.command("html")
@click.argument("directory", type=click.Path(path_type=Path))
@_board_filters
@click.option("--no-figures", is_flag=True, help="Leave out the figures (radius curves, clean against certified): faster.")
@with_store(readonly=True, lists=True)
def export_html(store: Store | None, directory: Path, dataset: str | None, norm: str | None, eps: float | None, reported_rows: str,
                at_eps: float | None, no_figures: bool) -> None:
    """A static site in DIRECTORY: one sortable board per (dataset, norm, eps), a page per run, the figures as PNG files.

    Open DIRECTORY/index.html in a browser: the pages need no server and fetch
    nothing from a network. Files of an earlier export are overwritten.

    \b
    Examples:
      harness export html board/
      harness export html board/ --dataset cifar10 --reported all
    """
    from harness.site import export_site

    runs = _finished_runs(store, dataset, norm, eps, at_eps)
    site = export_site(directory, runs, state().catalog.reported, samples=functools.partial(_best_samples, store), dataset=dataset,
                       norm=norm, eps=eps, reported_rows=reported_rows, at_eps=at_eps, figures=not no_figures)
    click.echo(f"wrote {len(site.pages)} pages and {len(site.figures)} figures to {directory}; open {directory / 'index.html'}")


def _add_file_export(fmt: str) -> None:
    suffix = {"markdown": "md"}.get(fmt, fmt)
    doc = f"""The leaderboard as {fmt} in FILE ('-': standard output), with the columns of `harness leaderboard --format {fmt}`.

    \b
    Example:
      harness export {fmt} leaderboard.{suffix} --dataset mnist
    """

    @export.command(fmt, help=doc)
    @click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
    @_board_filters
    @click.option("--per-seed", is_flag=True, help="A row for every run, instead of one row (mean ± std) for runs that differ only by seed.")
    @with_store(readonly=True, lists=True)
    def command(store: Store | None, file: Path, dataset: str | None, norm: str | None, eps: float | None, reported_rows: str,
                at_eps: float | None, per_seed: bool) -> None:
        from harness import leaderboard as lb
        from harness import render

        runs = _finished_runs(store, dataset, norm, eps, at_eps)
        groups = lb.build(runs, state().catalog.reported, dataset=dataset, norm=norm, eps=eps, reported_rows=reported_rows, per_seed=per_seed,
                          at_eps=at_eps, samples=None if at_eps is None else functools.partial(_best_samples, store))
        text = render.leaderboard(groups, fmt) + "\n"
        if str(file) == "-":
            click.echo(text, nl=False)
            return
        try:
            file.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {str(file)!r}: {exc.strerror or exc}") from exc
        click.echo(f"wrote the leaderboard ({fmt}, {sum(len(g.rows) for g in groups)} rows) to {file}")



for _fmt in ("markdown", "csv", "json"):
    _add_file_export(_fmt)


@cli.group()
def bench() -> None:
    """Benchmarks: one training step of any trainer, and those that plugins register.

    \b
    Examples:
      harness bench step --plugin linf_v2 --preset quick   # where a training step's time goes
      harness bench dist        # the l_p-dist layer against torch.cdist (plugin lpdist)
    """


@bench.command("step")
@click.option("--plugin", "trainer", required=True, metavar="NAME", help="The trainer (training method); see `harness plugins`.")
@click.option("--preset", default=None, metavar="NAME", help="Preset name, as for harness run. Default: the dataset's default preset.")
@click.option("--dataset", default=None, metavar="NAME", help="Dataset whose shape and classes the synthetic batches take. Default: "
              "the dataset of the trainer's first preset.")
@click.option("--eps", type=EpsType(), default=None, help="Radius in [0,1] pixel units, as for harness run. Default: the preset's.")
@click.option("--norm", type=NormType(), default=None, help="Threat-model norm, as for harness run. Default: the preset's.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a model or trainer option (repeatable), "
              "as for harness run: model.width=64.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="Batch size (--set trainer.batch_size). Default: the preset's.")
@click.option("--at", "at", multiple=True, type=click.FloatRange(0, 1), metavar="F",
              help="Time the step at fraction F of training (repeatable) instead of the middle of each phase of the schedule.")
@click.option("--repeat", type=click.IntRange(1, 1000), default=5, show_default=True, help="Timed steps per phase (the median is kept).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES), help="auto: CUDA when present, else the CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records (one per phase) instead of a table.")
def bench_step(trainer: str, preset: str | None, dataset: str | None, eps: float | None, norm: str | None, overrides: tuple[str, ...],
               batch_size: int | None, at: tuple[float, ...], repeat: int, device: str, as_json: bool) -> None:
    """Time one training step of a trainer, split into forward, loss/bounds, backward and optimiser.

    The trainer, model and options are those `harness run` would use (the
    preset, --set); the batches are synthetic, of the dataset's shape (nothing
    is downloaded). The step is timed at the middle of each phase of the
    method's schedule (l_inf-dist nets: p = 8, general p, p = ∞; crm: its
    cross-entropy warm-up and robust phases; linf_mlp: those and its eps
    warm-up), or at each --at: warm-up steps, then --repeat timed ones, the
    median kept. Drawing and augmenting the batch are not timed.

    \b
    Examples:
      harness bench step --plugin linf_v2 --preset quick --device cpu
      harness bench step --plugin crm --preset quick --batch-size 128 --json
      harness bench step --plugin linf_mlp --dataset cifar10 --at 0 --at 0.5 --at 1
    """
    import sys

    from harness import bench_step as b
    from harness.runner import RunRequest

    s = state()
    if dataset is None:
        dataset = b.default_dataset(s.catalog, trainer, preset)
    request = RunRequest(trainer=trainer, dataset=dataset, eps=eps, norm=norm, preset=preset, device=device, overrides=overrides,
                         attacks=[], certifiers=[])
    say = (lambda m: click.echo(f"  {m}", err=True)) if not as_json else (lambda m: None)
    result = b.profile(s.catalog, request, batch_size=batch_size, at=at, repeat=repeat, progress=say)
    sys.stderr.flush()
    click.echo(json.dumps(b.records(result), indent=2) if as_json else b.table(result))


@cli.group()
def db() -> None:
    """The results database's schema revision: show it, upgrade it.

    \b
    Examples:
      harness db current --db results.db
      harness db upgrade --db results.db     # a SQLite file is backed up beside it first
    """


@db.command("current")
@db_option
def db_current(db: str) -> None:
    """Print the database's revision (read-only).

    \b
    Example:
      harness db current --db results.db
    """
    from harness.store import database_revision

    click.echo(str(database_revision(db)))


@db.command("upgrade")
@db_option
def db_upgrade(db: str) -> None:
    """Upgrade the database to this harness's revision, backing up a SQLite file beside it first.

    It waits for other processes' writes to finish. Opening an older SQLite
    database upgrades it automatically when that is safe; this command is for
    the other cases (a server database, another process writing).

    \b
    Example:
      harness db upgrade --db results.db
    """
    from harness.store import upgrade_database

    click.echo(str(upgrade_database(db)))


@cli.command()
@click.option("--verbose", "-v", is_flag=True, help="Also show every component's options and each plugin's presets.")
@click.option("--check", is_flag=True, help="Check every plugin, component, preset and reported result; print each problem; exit 1 if any.")
@format_option(("table", "json"))
def plugins(verbose: bool, check: bool, fmt: str) -> None:
    """List installed plugins, their versions, hooks and what they registered.

    \b
    Examples:
      harness plugins --verbose
      harness plugins --check
      harness plugins --format json
    """
    from harness import plugin_report

    s = state()
    catalog = s.catalog
    if check:
        if fmt == "json":
            click.echo(json.dumps([p.as_json() for p in catalog.problems], indent=2))
        else:
            click.echo(plugin_report.check(s.plugins, catalog))
        if catalog.problems:
            raise click.exceptions.Exit(1)
        return
    if fmt == "json":
        click.echo(json.dumps(plugin_report.as_json(s.plugins, catalog), indent=2))
    else:
        click.echo(plugin_report.table(s.plugins, catalog, verbose=verbose))


def _register_plugin_commands(loaded: LoadedPlugins) -> None:
    """Let each plugin add its commands (to the built-in ones only: no earlier call's plugins linger); one that raises
    is named in a warning and left out."""
    cli.commands = dict(_CORE_COMMANDS)
    bench.commands = dict(_CORE_BENCH)
    for impl in loaded.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not take the CLI down  # noqa: BLE001
            click.echo(
                f"warning: plugin {impl.plugin_name!r} could not add its commands: {type(exc).__name__}: {one_line(exc)}; "
                f"disable it with {DISABLE_ENV}={impl.plugin_name}",
                err=True,
            )


def _show_deprecations_on_one_line() -> None:
    """Print a plugin's use of an old form as one ``warning:`` line (Python's default is two, with a source line)."""
    original = warnings.showwarning
    if getattr(original, "harness_one_line", False):
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
        if issubclass(category, HarnessDeprecationWarning):
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)
        else:
            original(message, category, filename, lineno, file, line)

    show.harness_one_line = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def _add_sweep() -> None:
    from harness.sweep.command import sweep

    cli.add_command(sweep)


_add_sweep()

#: The commands the host defines; plugins add theirs to copies of these on every start.
_CORE_COMMANDS = dict(cli.commands)
_CORE_BENCH = dict(bench.commands)


#: The arguments of this invocation (what ``--nproc`` starts again in every process).
_ARGV: list[str] | None = None


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with exit status 2 for user mistakes."""
    global _ARGV
    args = argv if argv is not None else sys.argv[1:]
    _ARGV = list(args)
    debug = "--debug" in args
    _show_deprecations_on_one_line()
    try:
        s = state()
        for failure in s.plugins.failures:
            click.echo(f"warning: {failure}", err=True)
        for line in s.plugins.unknown_names:
            click.echo(f"warning: {line}", err=True)
        _register_plugin_commands(s.plugins)
        code = cli.main(args=args, prog_name="harness", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        code = exc.exit_code
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt (Ctrl-C, a stop signal) into Abort
        cause = exc.__cause__
        said = one_line(cause) if isinstance(cause, KeyboardInterrupt) and str(cause) else ""
        click.echo(f"interrupted: {said}" if said else "interrupted", err=True)
        code = 130
    except UsageError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except PluginError as exc:
        if debug:
            raise
        click.echo(f"plugin error: {exc}", err=True)
        code = 1
    except HarnessError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        code = 1
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # python -m harness.cli (torchrun -m harness.cli)
    main()
