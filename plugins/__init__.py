"""The built-in plugins of harness, installed as ``harness_plugins``.

Each reaches the host through the ``harness`` entry-point group, exactly as a
third-party plugin does (see ``pyproject.toml``): ``datasets``, ``attacks``
(torchattacks), ``certifiers``, ``lpdist`` (the l_p-dist layers and their
benchmark) and ``linf_v2``.
"""
