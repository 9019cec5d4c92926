"""Data files of the built-in plugins: presets (``presets/``) and numbers reported
in papers (``reported/``). Installed as the package ``harness_registry``; no code."""

from importlib.resources import files
from importlib.resources.abc import Traversable


def path(*parts: str) -> Traversable:
    """A data file of this package, e.g. ``path("presets", "linf_v2.toml")``."""
    return files(__name__).joinpath(*parts)
