"""What ``harness plugins`` prints: the loaded plugins, what each registered, and the problems found."""

from __future__ import annotations

from typing import Any

from harness.catalog import Catalog, Entry
from harness.plugins import DISABLE_ENV, ONLY_ENV, LoadedPlugins, plugin_infos


def _describe(entry: Entry) -> dict[str, Any]:
    cls: Any = entry.component
    data: dict[str, Any] = {
        "kind": entry.kind,
        "name": entry.name,
        "key": entry.key,
        "qualified": entry.qualified,
        "description": cls.description,
        "source": None if cls.source is None else {"text": str(cls.source), "url": cls.source.url, "code": cls.source.code},
        "options": [{"name": n, "type": t, "default": d, "doc": doc} for n, t, d, doc in cls.option_docs()],
    }
    if getattr(cls, "norms", None):
        data["norms"] = list(cls.norms)
    if entry.kind == "trainer":
        data["model"] = cls.model
        data["models"] = None if cls.models is None else list(cls.models)
    return data


def as_json(plugins: LoadedPlugins, catalog: Catalog) -> dict[str, Any]:
    """Every plugin with its components, presets and reported results; failures and problems."""
    listed: list[dict[str, Any]] = []
    for info in plugin_infos(plugins):
        listed.append({
            "name": info.name,
            "version": info.version,
            "distribution": info.distribution,
            "hooks": info.hooks,
            "components": [_describe(e) for e in catalog.entries_of(info.name)],
            "presets": [
                {"trainer": p.trainer, "dataset": p.dataset, "name": p.name, "norm": p.norm, "eps": p.eps, "paper": p.paper,
                 "default": p.default, "file": p.file, "source": p.source}
                for p in catalog.presets if p.plugin == info.name
            ],
            "reported": [],
        })
    reported: dict[str, list[dict[str, Any]]] = {entry["name"]: entry["reported"] for entry in listed}
    for result in catalog.reported:
        owner = reported.get(result.plugin)
        if owner is not None:
            owner.append({"label": result.label, "trainer": result.trainer, "dataset": result.dataset,
                                      "norm": result.norm, "eps": result.eps, "file": result.file, "source": result.source})
    return {
        "plugins": listed,
        "disabled": plugins.disabled,
        "not_selected": plugins.not_selected,
        "problems": [p.as_json() for p in catalog.problems],
    }


def table(plugins: LoadedPlugins, catalog: Catalog, *, verbose: bool = False) -> str:
    lines = []
    for info in plugin_infos(plugins):
        version = f"{info.version} ({info.distribution})" if info.version else "(not from a distribution)"
        lines.append(f"{info.name} {version}")
        lines.append(f"  hooks: {', '.join(info.hooks)}")
        for entry in catalog.entries_of(info.name):
            cls: Any = entry.component
            source = f"  [{cls.source}]" if cls.source else ""
            norms = f" (norms: {', '.join(cls.norms)})" if getattr(cls, "norms", None) else ""
            shown = entry.name if entry.key == entry.name else f"{entry.name} (as {entry.key})"
            lines.append(f"  {entry.kind:<9} {shown:<18} {cls.description}{norms}{source}")
            if verbose:
                for opt, tname, default, doc in cls.option_docs():
                    lines.append(f"      {opt} = {default!r}  ({tname}) {doc}")
        presets = [p for p in catalog.presets if p.plugin == info.name]
        if presets:
            if verbose:
                lines += [f"  preset    {p.describe()}  — {p.source}" for p in presets]
            else:
                lines.append(f"  presets: {', '.join(sorted({f'{p.dataset}/{p.name}' for p in presets}))}")
    if plugins.disabled:
        lines.append(f"disabled ({DISABLE_ENV}): {', '.join(plugins.disabled)}")
    if plugins.not_selected:
        lines.append(f"not selected ({ONLY_ENV}): {', '.join(plugins.not_selected)}")
    if catalog.problems:
        lines.append(f"{len(catalog.problems)} problem(s): harness plugins --check lists them")
    return "\n".join(lines)


def check(plugins: LoadedPlugins, catalog: Catalog) -> str:
    """Every problem on its own line, or a one-line summary of what was checked."""
    if catalog.problems:
        return "\n".join(str(p) for p in catalog.problems)
    components = sum(len(v) for v in catalog.entries.values())
    return (
        f"no problems: {len(plugins.names())} plugins, {components} components, {len(catalog.presets)} presets, "
        f"{len(catalog.reported)} reported results checked"
    )
