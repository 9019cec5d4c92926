#!/usr/bin/env bash
# Create (or update) .venv with everything harness needs, CPU-only.
#
# torch is pinned to 2.13.0: on the development machines that is a local CPU
# wheel, where a plain `torch` would pull a multi-GB CUDA build. torchattacks
# is installed without its dependencies: it pins requests~=2.25 and wants
# torchvision, neither of which its code uses here (torchvision's PyPI wheel
# does not even import beside this torch); it needs scipy and tqdm, which the
# project depends on. auto-lirpa 0.3, the only release on PyPI, declares
# torch<1.13; it goes in with --no-deps too (its real needs, numpy, packaging,
# appdirs and pyyaml, are the project's dependencies) and runs on current torch
# through the patches in plugins/lib/lirpa/compat.py.
#
# triton goes in only when it does not import: a CUDA build of torch brings the
# triton it was built against, which must not be replaced; on a CPU machine the
# l_p-dist Triton kernels are tested through Triton's interpreter
# (tests/lpdist/test_triton_interpreted.py), which needs the package alone.
# Triton publishes Linux wheels only; elsewhere those tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
pip install torch==2.13.0
pip install -e '.[test,ray]'  # ray: harness sweep's tests run on a local Ray instance
# Last, and with --no-deps, so pip neither pulls nor complains about its stale pins.
pip install --no-deps torchattacks==3.5.1 auto-lirpa==0.3
.venv/bin/python -c "import triton" 2>/dev/null || pip install triton==3.9.0 || echo "triton not installed: its interpreted tests will skip"
.venv/bin/python -c "import importlib.metadata as m; print('.venv ready:', *(f'{d} {next((x.version for x in m.distributions(name=d)), \"absent\")}' for d in ('harness-bench', 'torch', 'torchattacks', 'auto-lirpa', 'triton')))"
