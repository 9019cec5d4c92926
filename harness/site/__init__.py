"""The static HTML board (``harness export html DIR``).

One page per threat model (:mod:`harness.site.board`: the leaderboard group as a sortable table), one per run
(configuration, provenance, results and cost, its radius curve), an index, and the figures as PNG files
(:mod:`harness.plots`). Style and script are inline (:mod:`harness.site.assets`): no server, no network.
"""

from harness.site.export import Site, export_site

__all__ = ["Site", "export_site"]
