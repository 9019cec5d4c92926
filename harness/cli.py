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
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from harness.commands import DEVICES, format_option
from harness.errors import HarnessDeprecationWarning, HarnessError, PluginError, UsageError, one_line
from harness.plugins import DISABLE_ENV, LoadedPlugins, load_plugins
from harness.store import STATUSES
from harness.threat import NORMS, parse_eps, parse_norm

if TYPE_CHECKING:
    from harness.catalog import Catalog
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


def with_store(f: Callable[..., Any] | None = None, *, readonly: bool = False) -> Any:
    """Open the ``--db`` store for the command (read-only for the read commands), print its warnings, close it afterwards."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        @db_option
        @functools.wraps(f)
        def wrapper(db: str, **kwargs: Any) -> Any:
            from harness.store import open_store

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
@click.option("--plugin", "trainer", required=True, metavar="NAME", help="The trainer (training method) to run; see `harness plugins`.")
@click.option("--dataset", required=True, metavar="NAME", help="Dataset (mnist, fashion-mnist, cifar10, ...).")
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
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="HARNESS_DATA", default=None,
              help="Data folder [env HARNESS_DATA; default ~/.cache/harness/data].")
@click.option("--save-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              help="Where the trained weights and config go (run-ID/).")
@click.option("--no-save", is_flag=True, help="Do not save the trained weights.")
@with_store
def run(store: Store, no_save: bool, attacks: tuple[str, ...], certifiers: tuple[str, ...], **options: Any) -> None:
    """Train with a trainer (--plugin), evaluate the model uniformly and record the run.

    Components from two plugins with the same name are addressed as
    PLUGIN:NAME (--attack toy:fgsm, --set attacker.toy:fgsm.steps=3).

    \b
    Examples:
      harness run --plugin linf_v2 --dataset mnist --preset quick
      harness run --plugin linf_v2 --dataset mnist --eps 0.3        # the paper's preset
      harness run --plugin linf_v2 --dataset cifar10 --epochs 20 --set model.width=1024
      harness run --plugin crm --dataset fashion-mnist --no-preset --norm 2 --eps 1.0 --certifier liplt
    """
    from harness.progress import ConsoleProgress
    from harness.runner import RunRequest, execute, plan_run

    s = state()
    request = RunRequest(
        attacks=list(attacks) or None,
        certifiers=list(certifiers) or None,
        save_dir=None if no_save else options.pop("save_dir"),
        **{k: v for k, v in options.items() if k != "save_dir"},
    )
    plan = plan_run(s.catalog, request, s.plugins.versions())
    _warn_about_problems(s.catalog)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run_id = execute(plan, store, progress=ConsoleProgress())
    record = store.get_run(run_id)
    from harness import render

    click.echo(render.run_summary(record))
    click.echo(f"details: harness show {run_id}    table: harness leaderboard --dataset {record.info.dataset}")
    errors = record.result.errors if record.result else []
    if errors:
        raise RunFailed(f"run {run_id} finished, but {len(errors)} of its components failed: " + "; ".join(errors))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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
@format_option(("table", "markdown", "csv", "json"))
@with_store(readonly=True)
def leaderboard(store: Store, dataset: str | None, norm: str | None, eps: float | None, reported_rows: str, fmt: str) -> None:
    """Finished runs grouped by (dataset, norm, eps), ranked by certified accuracy.

    Numbers reported in papers are shown beside them, marked "reported".

    \b
    Examples:
      harness leaderboard
      harness leaderboard --dataset cifar10 --eps 8/255 --format markdown
      harness leaderboard --reported all     # also the papers' numbers for settings not run yet
    """
    from harness import leaderboard as lb
    from harness import render

    runs = store.list_runs(status="finished", dataset=dataset, norm=norm, eps=eps)
    catalog = state().catalog
    if dataset is not None and not runs:
        _check_dataset(dataset, store, catalog.names("dataset"))
    groups = lb.build(runs, catalog.reported, dataset=dataset, norm=norm, eps=eps, reported_rows=reported_rows)
    click.echo(render.leaderboard(groups, fmt))


def _check_dataset(dataset: str, store: Store, registered: list[str]) -> None:
    """A ``--dataset`` filter that matches nothing: a UsageError if no run and no plugin knows the name (a typo)."""
    from harness.errors import unknown_name

    known = {r.info.dataset for r in store.list_runs()} | set(registered)
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
        click.echo(render.run_details(record, samples, stale=_stale(record)))


@cli.command()
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only runs with this status.")
@click.option("--dataset", default=None, help="Only this dataset.")
@with_store(readonly=True)
def runs(store: Store, status: str | None, dataset: str | None) -> None:
    """List recorded runs, whatever their status.

    \b
    Example:
      harness runs --status failed
    """
    from harness import render

    records = store.list_runs(status=status, dataset=dataset)
    if not records:
        if dataset is not None:
            _check_dataset(dataset, store, state().catalog.names("dataset"))
        click.echo("no runs recorded" if status is None and dataset is None else "no runs match")
        return
    click.echo(render.run_list(records, stale=_stale))


@cli.group()
def bench() -> None:
    """Benchmarks that plugins register.

    \b
    Example:
      harness bench dist        # the l_p-dist layer against torch.cdist
    """


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


def _stale(record: RunRecord) -> bool:
    """A ``running`` run whose process, on this host, no longer exists (killed with SIGKILL, OOM)."""
    import os
    import platform

    from harness.store import RUNNING

    env = record.info.environment
    if record.status != RUNNING or env.get("host") != platform.node() or not isinstance(env.get("pid"), int):
        return False
    try:
        os.kill(env["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


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


#: The commands the host defines; plugins add theirs to copies of these on every start.
_CORE_COMMANDS = dict(cli.commands)
_CORE_BENCH = dict(bench.commands)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with exit status 2 for user mistakes."""
    args = argv if argv is not None else sys.argv[1:]
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
    except click.exceptions.Abort:  # click turns KeyboardInterrupt (Ctrl-C, our SIGTERM handler) into Abort
        click.echo("interrupted", err=True)
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
