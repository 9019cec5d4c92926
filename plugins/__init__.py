"""The built-in plugins of harness. This folder, ``plugins/``, is installed as the package ``harness_plugins``.

Why the two names: an installed top-level package called ``plugins`` would
clash with anything else of that name in site-packages, so ``pyproject.toml``
maps the folder to ``harness_plugins`` (and ``registry/``, the data files, to
``harness_registry``). Code imports the installed names; only packaging needs
the mapping.

Two layers live here:

* **plugins**, one folder (or module) each, named as their entry point in
  ``pyproject.toml``: ``datasets``, ``torchattacks``, ``certifiers``,
  ``lirpa``, ``liplt``, ``lpdist``, ``linf_v1``, ``linf_v2``, ``linf_mlp``,
  ``crm``. Each reaches the host through the ``harness`` entry-point group,
  exactly as a third-party plugin does, and its ``__init__`` holds only its
  hook implementations (components are imported when a hook is called, so
  ``harness --help`` stays fast);
* **the library**, :mod:`harness_plugins.lib`: code that several plugins share.
  It registers nothing and imports no plugin.

A plugin imports the public ``harness`` API, the library and its own modules,
never another plugin: plugins refer to each other's components by registered
name (``model = "linf_dist_net"``), which the host resolves when it builds its
catalog. ``tests/test_layering.py`` enforces these rules.
"""
