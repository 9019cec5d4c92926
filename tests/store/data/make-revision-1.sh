#!/usr/bin/env bash
# How revision-1.db was made (once): real runs of the harness at commit 86943a6 (the last commit before
# store revision 2; schema_meta.version 2, which Alembic calls revision 1), then the WAL checkpointed into
# the file. Run from a checkout of that commit with its .venv:  tests/store/data/make-revision-1.sh OUT.db
# It cannot run against later code; it documents what the frozen database holds:
#   1 finished  linf_v2 mnist l_inf 0.3: pgd, interval, lipschitz-margin (radii)
#   2 finished  crm mnist l_2 1.58: pgd-l2, liplt, lipschitz-naive (radii), ibp, crown-ibp, a CROWN subset of 5
#   3 finished  linf_mlp fashion-mnist l_inf 0.1: pgd, crown, crown-ibp, ibp
#   4 failed    linf_v2 mnist (diverged: lr 1e38)
#   5 interrupted  linf_v2 mnist (SIGTERM during training)
#   6 running   linf_v2 fashion-mnist (SIGKILL during training: the row stays running)
set -euo pipefail
OUT=$(realpath -m "${1:?usage: make-revision-1.sh OUT.db}")
rm -f "$OUT" "$OUT-wal" "$OUT-shm"
H=${HARNESS:-.venv/bin/harness}
PY=${PYTHON:-.venv/bin/python}
D="--db $OUT --data-dir ${DATA:-/work/shared/data} --no-save --device cpu"
runs() { "$PY" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from runs').fetchone()[0])" "$OUT"; }
# Waits until run N's first epoch has started (its row exists), a few seconds more, then sends the signal.
kill_after_start() {
  local pid=$1 n=$2 sig=$3
  until [ -f "$OUT" ] && [ "$(runs)" -ge "$n" ]; do sleep 0.5; done
  sleep 4; kill -"$sig" "$pid"; wait "$pid" || true
}
$H run --plugin linf_v2 --dataset mnist --preset quick --epochs 1 --train-samples 300 --eval-samples 30 \
  --set model.width=32 --set model.depth=3 --set attacker.pgd.steps=3 $D
$H run --plugin crm --dataset mnist --norm 2 --eps 1.58 --preset quick --epochs 2 --train-samples 600 --eval-samples 30 \
  --set model.channel_scale=0.125 --set attacker.pgd-l2.steps=3 --set certifier.crown.max_samples=5 $D
$H run --plugin linf_mlp --dataset fashion-mnist --preset quick --epochs 1 --train-samples 300 --eval-samples 20 \
  --set model.width=16 --set model.depth=2 --set attacker.pgd.steps=3 $D
$H run --plugin linf_v2 --dataset mnist --preset quick --epochs 1 --train-samples 200 --eval-samples 20 \
  --set model.width=16 --set model.depth=3 --set trainer.lr=1e38 --set trainer.lam0=1e30 $D || true
$H run --plugin linf_v2 --dataset mnist --preset quick --epochs 50 --train-samples 3000 --eval-samples 20 \
  --set model.width=16 --set model.depth=3 $D & kill_after_start $! 5 TERM    # recorded 'interrupted'
$H run --plugin linf_v2 --dataset fashion-mnist --preset quick --epochs 50 --train-samples 3000 --eval-samples 20 \
  --set model.width=16 --set model.depth=3 $D & kill_after_start $! 6 KILL    # stays 'running'
"$PY" -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()" "$OUT"
"$H" runs --db "$OUT"
