"""Data files of the built-in plugins: presets (``presets/``) and numbers reported in papers (``reported/``).

This folder, ``registry/``, is installed as the package ``harness_registry``
(a generic top-level name such as ``registry`` would clash in site-packages).
It holds data, not code; the host's catalog of registered components is
``harness/catalog.py``. Built-in plugins return these files from their
``register_presets`` and ``register_reported_results`` hooks.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def path(*parts: str) -> Traversable:
    """A data file of this package, e.g. ``path("presets", "linf_v2.toml")``."""
    return files(__name__).joinpath(*parts)
