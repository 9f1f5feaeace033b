#!/usr/bin/env bash
# Issue 6's GPU measurements as one prepared run, on a machine with a CUDA GPU where crystal_train
# imports (installed, or this repository on PYTHONPATH):
#
#   scripts/gpu_benchmarks.sh SNAPSHOT OUTPUT_DIR
#
# 1. scripts/benchmark.py over the whole snapshot: CGCNN and SchNet, float32 and bf16, compiled and
#    not, batch 256, beside the PyG DataLoader baseline -> OUTPUT_DIR/benchmark.json, benchmark.log
# 2. crystal-train experiment=mp2018_cgcnn_formation (compiled, bf16) for at most TRAIN_SECONDS,
#    so epochs per second and the validation curve so far are measured even when the budget ends
#    before early stopping -> OUTPUT_DIR/train.log, history.csv, config.yaml (metrics.json if it finishes)
#
# Environment: DEVICE (cuda), LIMIT (a seeded subset, for a smoke run), TRAIN_SECONDS (360),
# BUDGET_SECONDS (the whole script's wall-clock limit, at least 330: the benchmark, which measures
# compiled settings first, is stopped in time to leave the training at least 240 s, as its two cold
# compiles of the wider model come first, and the training is cut to end 45 s before the limit so
# its files are copied out), PYTHON (python3),
# CACHE_DIR (default: a temporary folder, removed at the end; the graph cache is built once and
# shared by both steps), BENCHMARK_ARGS (more benchmark.py flags; a repeated flag overrides the one
# above, e.g. "--compile off") and TRAIN_OVERRIDES (more Hydra overrides for the training run); the
# last two are split at spaces, so no single flag or override may contain one.
# The output holds at most six small files. A failing step is reported and the next one still runs;
# the exit status is that of the first failure (a step stopped at its time limit is not one: 124, or
# 137 once the limit has passed, when it outlived the grace period after SIGINT).
set -uo pipefail -o noglob

if [[ $# -ne 2 ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
device=${DEVICE:-cuda}
python=${PYTHON:-python3}
train_seconds=${TRAIN_SECONDS:-360}
budget=${BUDGET_SECONDS:-}
train_reserve=240
if ! [[ $train_seconds =~ ^[0-9]+$ ]] || ((train_seconds < 1)); then
    echo "TRAIN_SECONDS must be a positive number of seconds, not '$train_seconds'" >&2
    exit 2
fi
if [[ -n $budget ]] && { ! [[ $budget =~ ^[0-9]+$ ]] || ((budget < 330)); }; then
    echo "BUDGET_SECONDS must be at least 330 (30 s of benchmark, then $train_reserve s of training and 60 s of margins), not '$budget'" >&2
    exit 2
fi
# true when exit status $1 of a step started at second $2 under a time limit of $3 s means it was stopped there
stopped_at_limit() {
    (($1 == 124 || ($1 == 137 && SECONDS - $2 >= $3)))
}
snapshot=$(realpath "$1")
out=$(mkdir -p "$2" && realpath "$2")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cache=$(realpath -m "${CACHE_DIR:-$scratch/cache}")
run_dir=$scratch/cgcnn_formation
limit_args=()
limit_overrides=()
if [[ -n ${LIMIT:-} ]]; then
    limit_args=(--limit "$LIMIT")
    limit_overrides=("data.limit=$LIMIT")
fi
rm -f "$out"/{benchmark.json,benchmark.log,train.log,history.csv,config.yaml,metrics.json}
cd "$(dirname "$0")/.."
status=0

benchmark_limit=()
benchmark_seconds=0
if [[ -n $budget ]]; then
    # 15: the benchmark's grace after SIGINT (--kill-after); 45: the training's end before the budget's
    benchmark_seconds=$((budget - SECONDS - 15 - train_reserve - 45))
    benchmark_limit=(timeout --signal=INT --kill-after=15 "$benchmark_seconds")
fi
echo "== $(date -u +%FT%TZ) benchmark.py on $device${budget:+, for at most $benchmark_seconds s}" | tee "$out/benchmark.log"
started=$SECONDS
${benchmark_limit[@]+"${benchmark_limit[@]}"} "$python" scripts/benchmark.py --snapshot "$snapshot" ${limit_args[@]+"${limit_args[@]}"} --device "$device" --models cgcnn,schnet \
    --precisions 32,bf16 --compile both --batch-size 256 --eval-batch-size 1024 --warmup-batches 50 \
    --cache-dir "$cache" --output "$out/benchmark.json" ${BENCHMARK_ARGS:-} >/dev/null 2>>"$out/benchmark.log"
rc=$?
stopped=false
[[ -n $budget ]] && stopped_at_limit $rc $started "$benchmark_seconds" && stopped=true
echo "== $(date -u +%FT%TZ) benchmark.py exit status $rc$($stopped && echo " (stopped at BUDGET_SECONDS; benchmark.json keeps what it measured)")" | tee -a "$out/benchmark.log"
((rc != 0 && status == 0)) && ! $stopped && status=$rc
if [[ -n $budget ]] && ((budget - SECONDS - 45 < train_seconds)); then
    train_seconds=$((budget - SECONDS - 45))
fi

echo "== $(date -u +%FT%TZ) training for at most $train_seconds s" | tee "$out/train.log"
started=$SECONDS
timeout --foreground --signal=INT --kill-after=30 "$train_seconds" "$python" -m crystal_train.cli.train experiment=mp2018_cgcnn_formation \
    "data.snapshot=$snapshot" ${limit_overrides[@]+"${limit_overrides[@]}"} "data.cache_dir=$cache" "trainer.device=$device" seed=0 \
    trainer.compile=true trainer.precision=bf16 trainer.progress_bar=false "hydra.run.dir=$run_dir" ${TRAIN_OVERRIDES:-} >>"$out/train.log" 2>&1
rc=$?
stopped=false
stopped_at_limit $rc $started "$train_seconds" && stopped=true
echo "== $(date -u +%FT%TZ) training exit status $rc$($stopped && echo " (stopped at the time budget)")" | tee -a "$out/train.log"
((rc != 0 && status == 0)) && ! $stopped && status=$rc
for name in history.csv config.yaml metrics.json; do
    [[ -f $run_dir/$name ]] && cp "$run_dir/$name" "$out/"
done
exit $status
