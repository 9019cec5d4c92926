#!/usr/bin/env bash
# How schema-1.db was made (once, on 2026-11-30): runs of the schema-1 harness (commit 3655b16, checked
# out at /work/baseline with its own .venv), then the WAL checkpointed into the file. It cannot run against
# later code; it documents what the frozen database holds.
set -x
H=/work/baseline/.venv/bin/harness
D="--db /tmp/v1db/schema-1.db --data-dir /work/shared/data --no-save --device cpu"
$H run --plugin linf_v2 --dataset mnist --preset quick --epochs 1 --train-samples 1000 --eval-samples 50 --set model.width=32 --set model.depth=3 --set attacker.pgd.steps=3 $D
$H run --plugin crm --dataset mnist --norm 2 --eps 1.58 --preset quick --epochs 2 --train-samples 600 --eval-samples 30 --set model.channel_scale=0.125 --set attacker.pgd-l2.steps=3 --set certifier.crown.max_samples=5 $D
$H run --plugin linf_v1 --dataset mnist --preset quick --epochs 1 --train-samples 500 --eval-samples 20 --set model.width=16 --set model.depth=3 --set trainer.lr=1e30 $D
$H run --plugin linf_mlp --dataset mnist --preset quick --epochs 3 --train-samples 3000 --eval-samples 20 --set model.width=16 --set model.depth=2 $D &
PID=$!; sleep 25; kill -TERM $PID; wait $PID   # recorded 'interrupted'
$H run --plugin linf_v2 --dataset fashion-mnist --preset quick --epochs 3 --train-samples 3000 --eval-samples 20 --set model.width=16 --set model.depth=3 $D &
PID=$!; sleep 25; kill -KILL $PID; wait $PID   # stays 'running'
# and a failed run (a diverged model):
$H run --plugin linf_v2 --dataset mnist --preset quick --epochs 1 --train-samples 500 --eval-samples 20 --set model.width=16 --set model.depth=3 --set trainer.lr=1e38 --set trainer.lam0=1e30 $D
