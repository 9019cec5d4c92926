#!/usr/bin/env bash
# How revision-2.db was made (once): real runs of the harness at commit 885e2fb (the last commit before store
# revision 3), then the WAL checkpointed into the file. Run from any checkout with a .venv, as
#   tests/store/data/make-revision-2.sh OUT.db
# It runs the code of 885e2fb (exported to a temporary folder, put first on PYTHONPATH; the venv's editable install
# only fills in what that path lacks). It documents what the frozen database holds:
#   1 finished  linf_v2 mnist l_inf 0.05: pgd, interval, lipschitz-margin (radii, some certified); then a second evaluation
#               (harness eval 1 --certifier interval --eval-samples 20)
#   2 finished  crm mnist l_2 1.58: pgd-l2, liplt, lipschitz-naive (radii), ibp, crown-ibp, a CROWN subset of 5
#   3 failed    linf_v2 mnist (diverged: lr 1e38)
set -euo pipefail
OUT=$(realpath -m "${1:?usage: make-revision-2.sh OUT.db}")
rm -f "$OUT" "$OUT-wal" "$OUT-shm"
PY=$(realpath -s "${PYTHON:-.venv/bin/python}")  # -s: the venv's own python, not the interpreter it links to
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
git archive 885e2fb | tar -x -C "$SRC"
mkdir "$SRC/path"
ln -s "$SRC/harness" "$SRC/path/harness"
ln -s "$SRC/plugins" "$SRC/path/harness_plugins"
ln -s "$SRC/registry" "$SRC/path/harness_registry"
H() { (cd "$SRC" && PYTHONPATH="$SRC/path" "$PY" -m harness.cli "$@"); }
D="--db $OUT --data-dir ${DATA:-/work/shared/data} --device cpu"
H run --plugin linf_v2 --dataset mnist --preset quick --eps 0.05 --epochs 2 --train-samples 1000 --eval-samples 30 \
  --set model.width=32 --set model.depth=3 --set attacker.pgd.steps=3 $D --save-dir "$SRC/runs"
H eval 1 --certifier interval --eval-samples 20 --set attacker.pgd.steps=3 $D
H run --plugin crm --dataset mnist --norm 2 --eps 1.58 --preset quick --epochs 2 --train-samples 600 --eval-samples 30 \
  --set model.channel_scale=0.125 --set attacker.pgd-l2.steps=3 --set certifier.crown.max_samples=5 $D --no-save
H run --plugin linf_v2 --dataset mnist --preset quick --epochs 1 --train-samples 200 --eval-samples 20 \
  --set model.width=16 --set model.depth=3 --set trainer.lr=1e38 --set trainer.lam0=1e30 $D --no-save || true
"$PY" -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.execute('PRAGMA journal_mode=DELETE'); c.close()" "$OUT"
H runs --db "$OUT"
