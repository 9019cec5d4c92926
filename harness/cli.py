"""The ``harness`` command line (click).

User errors are one line on stderr and exit status 2; ``--debug`` shows
tracebacks instead.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from harness.errors import HarnessError, PluginError, UsageError
from harness.plugins import make_plugin_manager, plugin_infos
from harness.catalog import Catalog
from harness.store import STATUSES, Store, open_store
from harness.threat import NORMS, format_eps, parse_eps, parse_norm

DEFAULT_DB = "results.db"


class _State:
    """Built once per process: the plugin manager and the registry."""

    def __init__(self) -> None:
        self.pm = make_plugin_manager()
        self._registry: Catalog | None = None

    @property
    def registry(self) -> Catalog:
        if self._registry is None:
            self._registry = Catalog.from_plugin_manager(self.pm)
        return self._registry

    def plugin_versions(self) -> dict[str, str | None]:
        return {info.name: info.version for info in plugin_infos(self.pm)}


_state: _State | None = None


def state() -> _State:
    global _state
    if _state is None:
        _state = _State()
    return _state


# -- shared options ---------------------------------------------------------------------


class EpsType(click.ParamType):
    name = "EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        return parse_eps(value)


class NormType(click.ParamType):
    name = "|".join(NORMS)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return parse_norm(value)


def db_option(f: Callable) -> Callable:
    return click.option(
        "--db",
        envvar="HARNESS_DB",
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help="Results database: a SQLAlchemy URL or a SQLite file path [env HARNESS_DB].",
    )(f)


def format_option(choices: tuple[str, ...]) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(choices), default=choices[0], show_default=True, help="Output format.")


def with_store(f: Callable) -> Callable:
    """Open the ``--db`` store for the command and close it afterwards."""

    @db_option
    @functools.wraps(f)
    def wrapper(db: str, **kwargs: Any) -> Any:
        store = open_store(db)
        try:
            return f(store=store, **kwargs)
        finally:
            store.close()

    return wrapper


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
    """
    ctx.obj = {"debug": debug}


@cli.command()
@click.option("--plugin", "plugin", required=True, metavar="NAME", help="Training method (a registered trainer; see `harness plugins`).")
@click.option("--dataset", required=True, metavar="NAME", help="Dataset (mnist, fashion-mnist, cifar10, ...).")
@click.option("--eps", type=EpsType(), default=None, help="Radius in [0,1] pixel units (0.3, 8/255). Default: the preset's.")
@click.option("--norm", type=NormType(), default=None, help="Threat-model norm. Default: the preset's (inf).")
@click.option("--preset", default=None, metavar="NAME", help="Preset name (e.g. quick, paper-0.3). Default: the paper's preset for --eps, else the dataset's default.")
@click.option("--epochs", type=int, default=None, help="Override the number of epochs; the schedule scales with it.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None, help="Random seed. Default: the preset's (the paper's).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]), help="Training and evaluation device.")
@click.option("--eval-samples", type=int, default=None, help="Evaluate on a fixed, seeded subset of N test samples (the same for every run).")
@click.option("--eval-batch-size", type=int, default=500, show_default=True, help="Batch size of the evaluation.")
@click.option("--train-samples", type=int, default=None, help="Train on a fixed, seeded subset of N training samples (smoke tests).")
@click.option("--attack", "attacks", multiple=True, metavar="NAME", help="Run only these attacks (repeatable). Default: every attack for the norm.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override an option: model.width=256, trainer.lr=0.01, attacker.pgd.steps=20.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="HARNESS_DATA", default=None, help="Data folder [env HARNESS_DATA; default ~/.cache/harness/data].")
@click.option("--save-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True, help="Where the trained weights and config go (run-ID/).")
@click.option("--no-save", is_flag=True, help="Do not save the trained weights.")
@with_store
def run(store: Store, no_save: bool, attacks: tuple[str, ...], **options: Any) -> None:
    """Train a method, evaluate it uniformly and record the run.

    \b
    Examples:
      harness run --plugin linf_v2 --dataset mnist --preset quick
      harness run --plugin linf_v2 --dataset mnist --eps 0.3        # the paper's preset
      harness run --plugin linf_v2 --dataset cifar10 --epochs 20 --set model.width=1024
    """
    from harness.progress import ConsoleProgress
    from harness.runner import RunRequest, execute, plan_run

    s = state()
    request = RunRequest(
        attacks=list(attacks) or None,
        save_dir=None if no_save else options.pop("save_dir"),
        **{k: v for k, v in options.items() if k != "save_dir"},
    )
    plan = plan_run(s.registry, request, s.plugin_versions())
    signal.signal(signal.SIGTERM, _raise_interrupt)
    run_id = execute(plan, store, progress=ConsoleProgress())
    record = store.get_run(run_id)
    click.echo(_summary(record))
    click.echo(f"details: harness show {run_id}    table: harness leaderboard --dataset {record.info.dataset}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _summary(record: Any) -> str:
    m = record.metrics
    pct = lambda k: f"{100 * m[k]:.2f}%" if k in m else "—"  # noqa: E731
    n = int(m.get("eval_samples", 0))

    def of(name: str) -> str:
        tried = int(m.get(f"certified_samples/{name}", n))
        return f" of {tried}" if tried < n else ""

    per = ", ".join(f"{k.split('/', 1)[1]} {pct(k)}{of(k.split('/', 1)[1])}" for k in sorted(m) if k.startswith("certified_accuracy/"))
    return (
        f"run {record.id} {record.status}: clean {pct('clean_accuracy')}  attack {pct('robust_accuracy')}  "
        f"certified {pct('certified_accuracy')}" + (f" ({per})" if per else "") + f"  on {int(m.get('eval_samples', 0))} test samples; "
        f"train {record.train_seconds or 0:.0f}s, eval {record.eval_seconds or 0:.0f}s"
    )


@cli.command()
@click.option("--dataset", default=None, help="Only this dataset.")
@click.option("--norm", type=NormType(), default=None, help="Only this norm.")
@click.option("--eps", type=EpsType(), default=None, help="Only this radius (0.3, 8/255).")
@click.option("--reported", "reported_rows", type=click.Choice(["runs", "all", "none"]), default="runs", show_default=True,
              help="Numbers reported in papers: beside measured runs, for every setting, or none.")
@format_option(("table", "markdown", "csv", "json"))
@with_store
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
    groups = lb.build(runs, state().registry.reported, dataset=dataset, norm=norm, eps=eps, reported_rows=reported_rows)
    click.echo(render.leaderboard(groups, fmt))


@cli.command()
@click.argument("run_id", type=click.IntRange(1, 2**63 - 1))
@click.option("--samples", "n_samples", type=int, default=0, help="Also list the first N per-sample results.")
@format_option(("table", "json"))
@with_store
def show(store: Store, run_id: int, n_samples: int, fmt: str) -> None:
    """Everything stored about one run: configuration, environment, metrics.

    \b
    Examples:
      harness show 1
      harness show 1 --samples 20
      harness show 1 --format json
    """
    from dataclasses import asdict

    from harness import render

    record = store.get_run(run_id)
    samples = store.samples(run_id)[:n_samples] if n_samples else []
    if fmt == "json":
        data = asdict(record)
        data["created_at"] = record.created_at.isoformat()
        data["finished_at"] = record.finished_at.isoformat() if record.finished_at else None
        data["samples"] = [asdict(s) for s in samples]
        click.echo(json.dumps(data, indent=2))
        return
    info = record.info
    lines = [
        f"run {record.id}: {record.status}" + (" (stale: its process is gone)" if _stale(record) else ""),
        f"  method      {info.plugin} (preset {info.preset}, seed {info.seed}, {info.epochs} epochs)",
        f"  threat      {info.dataset}, l_{info.norm} eps={format_eps(info.eps)}",
        f"  created     {record.created_at:%Y-%m-%d %H:%M:%S} UTC" + (f", ended {record.finished_at:%Y-%m-%d %H:%M:%S}" if record.finished_at else ""),
        f"  time        train {render.duration(record.train_seconds)}, eval {render.duration(record.eval_seconds)}",
        f"  device      {info.device}",
        f"  versions    harness {info.environment.get('harness')}, torch {info.environment.get('torch')}, python {info.environment.get('python')}",
        f"  commit      {info.environment.get('commit') or 'unknown'}",
    ]
    if record.error:
        lines.append(f"  error       {record.error}")
    if record.metrics:
        lines.append("metrics:")
        for key in sorted(record.metrics):
            value = record.metrics[key]
            shown = f"{100 * value:.2f}%" if "accuracy" in key else f"{value:g}"
            lines.append(f"  {key:<40} {shown}")
    lines.append("configuration:")
    lines += ["  " + line for line in json.dumps(info.config, indent=2).splitlines()]
    if samples:
        names = sorted({*samples[0].attacks, *samples[0].certificates})
        header = ["index", "label", "pred", *names]
        rows = []
        for s in samples:
            cells = [str(s.index), str(s.label), str(s.prediction)]
            for name in names:
                if name in s.attacks:
                    cells.append("survived" if s.attacks[name] else "broken")
                else:
                    ok, radius = s.certificates[name]
                    cells.append(("certified" if ok else "-") + (f" r={radius:.4g}" if radius is not None else ""))
            rows.append(cells)
        lines.append("samples:")
        lines.append(render.text_table(header, rows))
    click.echo("\n".join(lines))


@cli.command()
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only runs with this status.")
@click.option("--dataset", default=None, help="Only this dataset.")
@with_store
def runs(store: Store, status: str | None, dataset: str | None) -> None:
    """List recorded runs, whatever their status.

    \b
    Example:
      harness runs --status failed
    """
    from harness import render

    rows = []
    for r in store.list_runs(status=status, dataset=dataset):
        cert = r.metrics.get("certified_accuracy")
        rows.append([
            str(r.id), r.status + (" (stale: its process is gone)" if _stale(r) else ""), r.info.plugin, r.info.preset or "—", r.info.dataset,
            f"l_{r.info.norm} {format_eps(r.info.eps)}", render.percent(cert), f"{r.created_at:%Y-%m-%d %H:%M}",
            (r.error or "")[:60],
        ])
    if not rows:
        click.echo("no runs recorded")
        return
    click.echo(render.text_table(["id", "status", "plugin", "preset", "dataset", "threat", "certified", "created (UTC)", "error"], rows))


@cli.group()
def bench() -> None:
    """Benchmarks that plugins register.

    \b
    Example:
      harness bench dist        # the l_p-dist layer against torch.cdist
    """


def _stale(record: Any) -> bool:
    """A ``running`` run whose process, on this host, no longer exists (killed with SIGKILL, OOM)."""
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
def plugins(verbose: bool) -> None:
    """List installed plugins, their versions, hooks and what they registered.

    \b
    Example:
      harness plugins --verbose
    """
    s = state()
    registry = s.registry
    for info in plugin_infos(s.pm):
        version = f"{info.version} ({info.distribution})" if info.version else "(not from a distribution)"
        click.echo(f"{info.name} {version}")
        click.echo(f"  hooks: {', '.join(info.hooks)}")
        for kind, names in sorted(registry.plugin_components.get(info.name, {}).items()):
            for name in names:
                cls = registry.get(kind, name)
                source = f"  [{cls.source}]" if cls.source else ""
                norms = f" (norms: {', '.join(cls.norms)})" if getattr(cls, "norms", None) else ""
                click.echo(f"  {kind:<9} {name:<18} {cls.description}{norms}{source}")
                if verbose:
                    for opt, tname, default, doc in cls.option_docs():
                        click.echo(f"      {opt} = {default!r}  ({tname}) {doc}")
        presets = [p for p in registry.presets if p.origin.endswith(f"(plugin {info.name!r})")]
        if presets:
            if verbose:
                for p in presets:
                    click.echo(f"  preset    {p.describe()}  — {p.source}")
            else:
                click.echo(f"  presets: {', '.join(sorted({f'{p.dataset}/{p.name}' for p in presets}))}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with exit status 2 for user mistakes."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        state().pm.hook.register_commands(cli=cli)
        code = cli.main(args=argv, prog_name="harness", standalone_mode=False)
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
