#!/usr/bin/env bash
# The paper-scale runs a 2-core CPU can carry (issue 17), one run at a time, so that a sweep spread over several
# sessions and machines accumulates: after each run its small outputs are kept under results/runs (make keep) and,
# with COMMIT=1, committed at once. Finished runs are skipped (skip_finished=true), so starting the queue again
# continues where it stopped; a killed run loses only itself (trained models stay in the model cache).
#
#   LABELFREE_DATA_DIR=../shared/data LABELFREE_CACHE_DIR=$HOME/.cache/labelfree \
#     nohup bash scripts/paper_queue.sh > paper_queue.log 2>&1 &
#
# Environment: COMMIT=1 commits each kept run; STOP_AT=<unix time> starts no run whose estimate (minutes, second
# field below) would end after it; ONLY=<regex> runs the matching units only; LANE=k/N runs every N-th unit from the
# k-th (k = 0..N-1), so N queues with OMP_NUM_THREADS=1 each share the cores: on 2 cores, two 1-thread lanes train
# the MNIST autoencoder 1.8x and the ECG5000 LSTM 2x faster in total than one 2-thread queue, the Burgess VAE 1.1x
# (docs/NOTEBOOK.md). Lanes commit one at a time (git's index lock; retried). CIFAR-10 and dSprites are not here:
# they need a GPU (README, time table).
# Edit this file by replacing it (write a copy, then mv), never in place while a queue runs: bash reads a script
# as it goes, and a queue running an edited file fails with a syntax error where it continues.
set -uo pipefail
cd "$(dirname "$0")/.."
MAKE_CMD=${MAKE_CMD:-make}
COMMIT=${COMMIT:-0}
STOP_AT=${STOP_AT:-0}
ONLY=${ONLY:-.}
LANE=${LANE:-0/1}
if [[ ! $LANE =~ ^([0-9]+)/([1-9][0-9]*)$ ]] || (( BASH_REMATCH[1] >= BASH_REMATCH[2] )); then
  echo "LANE must be k/N with 0 <= k < N (got '$LANE')" >&2
  exit 2
fi
LANE_K=${BASH_REMATCH[1]}
LANE_N=${BASH_REMATCH[2]}
# ECG5000 examples without influence functions: on the trained LSTM the paper's LiSSA (and its expectation, the
# Arnoldi solver) diverges, the Hessian having an eigenvalue of about -2466 (docs/ecg5000_influence.md)
ECG_EXAMPLES='protocol.examples.explainers=[tracin,simplex,dknn]'

# name | estimated minutes, for STOP_AT: rounded up from the runs measured in a 1-thread lane beside another where
# they exist (results/TIMES-paper.md; a single 2-thread queue is as fast or faster; the VAEs: 10-22 min measured on
# 2 threads alone), else scaled | make arguments
UNITS=(
  "mnist_consistency features seed 1|25|consistency-features CONSISTENCY=mnist_consistency:1"
  "mnist_consistency examples seed 1|60|consistency-examples CONSISTENCY=mnist_consistency:1"
  "mnist_consistency features seed 2|25|consistency-features CONSISTENCY=mnist_consistency:2"
  "mnist_consistency examples seed 2|60|consistency-examples CONSISTENCY=mnist_consistency:2"
  "mnist_consistency features seed 3|25|consistency-features CONSISTENCY=mnist_consistency:3"
  "mnist_consistency examples seed 3|60|consistency-examples CONSISTENCY=mnist_consistency:3"
  "ecg5000_consistency features seed 42|40|consistency-features CONSISTENCY=ecg5000_consistency:42"
  "ecg5000_consistency examples seed 42 (no influence functions)|60|consistency-examples CONSISTENCY=ecg5000_consistency:42 OVERRIDES=$ECG_EXAMPLES"
)
for seed in 1 2 3 4 5; do
  UNITS+=("mnist_pretext seed $seed|65|pretext PRETEXT_SEEDS=$seed")
done
UNITS+=("mnist_roar seed 1|40|roar ROAR_SEEDS=1")
for seed in 1 2 3 4 5; do
  for model in beta_vae tc_vae; do
    for beta in 1 5 10; do
      UNITS+=("mnist_disvae $model beta=$beta seed $seed|22|disvae DISVAE_EXPERIMENTS=mnist_disvae DISVAE_MODELS=$model DISVAE_BETAS=$beta DISVAE_SEEDS=$seed")
    done
  done
done

commit_kept() {
  local name=$1 seconds=$2
  git add results/runs || return 1
  if git diff --cached --quiet -- results/runs; then
    echo "nothing new to commit for $name"
    return 0
  fi
  for _ in 1 2 3 4 5; do  # another commit may hold the index for a moment
    if git commit -q -m "Paper-scale run kept: $name ($((seconds / 60)) min, ${OMP_NUM_THREADS:-default} torch threads on $(nproc --all) CPU cores)" -- results/runs; then
      return 0
    fi
    sleep 5
  done
  return 1
}

index=-1
for unit in "${UNITS[@]}"; do
  IFS='|' read -r name minutes args <<< "$unit"
  [[ $name =~ $ONLY ]] || continue
  index=$((index + 1))
  (( index % LANE_N == LANE_K )) || continue
  now=$(date +%s)
  if (( STOP_AT > 0 && now + minutes * 60 > STOP_AT )); then
    echo "$(date -Is) stop: '$name' (~$minutes min) would end after STOP_AT"
    break
  fi
  echo "$(date -Is) start: $name"
  start=$now
  # shellcheck disable=SC2086  # the make arguments are words
  if ! $MAKE_CMD SCALE=paper $args; then
    echo "$(date -Is) FAILED: $name"
    exit 1
  fi
  $MAKE_CMD keep SCALE=paper
  seconds=$(( $(date +%s) - start ))
  echo "$(date -Is) done: $name in ${seconds}s"
  if [[ $COMMIT == 1 ]]; then
    commit_kept "$name" "$seconds" || { echo "commit failed: $name"; exit 1; }
  fi
done
echo "$(date -Is) queue finished"
