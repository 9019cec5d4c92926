"""Sweeps: a matrix of runs executed as Ray tasks (or one after another without Ray), idempotently.

* :mod:`harness.sweep.spec`: the spec (TOML or the command line's quick form) and its cells;
* :mod:`harness.sweep.state`: each cell's run in the store, and what the sweep does with it;
* :mod:`harness.sweep.cell`: one cell run to its end (the body of a Ray task);
* :mod:`harness.sweep.driver`: validation, the plan, the tasks, progress and retries;
* :mod:`harness.sweep.report`: what it prints; :mod:`harness.sweep.command`: ``harness sweep``.

Nothing is imported here, so that the command line starts without torch.
"""
