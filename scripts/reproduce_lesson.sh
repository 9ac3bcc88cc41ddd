#!/usr/bin/env bash
# The reference lesson's full-size result on one GPU or TPU: train configs/mnist.py for its 10,000 steps,
# sample the guidance sweep (0, 1, 2, 4, 7, 10, 20) and evaluate every scale, then write the wall time of
# each stage to WORKDIR/timings.json. Rerunning resumes: a finished stage costs only its start-up.
#
#   bash scripts/reproduce_lesson.sh WORKDIR [--config.FIELD=VALUE ...]
#
# Extra overrides go to every stage (e.g. --config.model.dtype=float32). Environment:
#   CONFIG                  config file (default configs/mnist.py; CI dry-runs configs/tiny.py)
#   STAGES                  which stages to run, in order (default "train sample eval")
#   PER_CELL                samples per prompt and scale in the sweep; the evaluation draws 7 x PER_CELL per
#                           digit, so both sample 70 x PER_CELL images per call and share one compiled sampler
#                           (default 4)
#   JAX_COMPILATION_CACHE_DIR  where compiled programs are kept between the stages (default WORKDIR/xla_cache)
set -euo pipefail
cd "$(dirname "$0")/.."
workdir=${1:?usage: bash scripts/reproduce_lesson.sh WORKDIR [--config.FIELD=VALUE ...]}
shift
config=${CONFIG:-configs/mnist.py}
stages=${STAGES:-train sample eval}
per_cell=${PER_CELL:-4}
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$workdir/xla_cache}
export PYTHONUNBUFFERED=1

rows=$((70 * per_cell))  # 10 prompts x 7 scales x PER_CELL = 10 digits x 7 PER_CELL samples.
common=(--config="$config" --workdir="$workdir" "--config.sample.guidance_scales=(0.,1.,2.,4.,7.,10.,20.)"
        --config.sample.respacing=100 --config.sample.batch_size="$rows")
timings="$workdir/timings.json"
measured=()

# A SIGTERM to this script (from `timeout`, a scheduler or kill) is passed on to the running stage, so
# training saves a checkpoint and stops as it does when run directly; the later stages are then skipped.
# (Ctrl-C reaches the stage by itself: it signals the whole process group.)
stage_pid=""
stopped=""
trap 'stopped=SIGTERM; [ -z "$stage_pid" ] || kill -TERM "$stage_pid" 2>/dev/null || true' TERM
trap 'stopped=SIGINT' INT

run_stage() {  # "$@" in the background, waited for through any signals this script receives
  "$@" &
  stage_pid=$!
  local rc
  while :; do
    rc=0
    wait "$stage_pid" || rc=$?
    kill -0 "$stage_pid" 2>/dev/null || break  # Still running: a trapped signal interrupted the wait.
  done
  stage_pid=""
  return "$rc"
}

for stage in $stages; do
  start=$(date +%s.%N)
  case "$stage" in
    train) run_stage python3 main.py "${common[@]}" --mode=train "$@" ;;
    sample) run_stage python3 main.py "${common[@]}" --mode=sample --config.sample.num_per_prompt="$per_cell" "$@" ;;
    eval) run_stage python3 main.py "${common[@]}" --mode=eval --config.eval.samples_per_digit=$((7 * per_cell)) "$@" ;;
    *) echo "error: unknown stage '$stage' in STAGES (use train, sample, eval)." >&2; exit 2 ;;
  esac
  seconds=$(python3 -c "print(round($(date +%s.%N) - $start, 1))")
  if [ -n "$stopped" ]; then
    echo "Stopped by $stopped during the $stage stage; rerun the same command to resume." >&2
    exit 0
  fi
  measured+=("$stage" "$seconds")
  echo "$stage: $seconds s (wall, compiling included)" >&2
done

# Merged into timings.json (a rerun of one stage keeps the others), with the device that ran them.
python3 - "$timings" "${measured[@]}" <<'PY'
import json, os, sys
import jax
path, pairs = sys.argv[1], sys.argv[2:]
timings = json.load(open(path)) if os.path.exists(path) else {}
timings.update({f"{stage}_s": float(s) for stage, s in zip(pairs[::2], pairs[1::2])})
timings["device"] = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {jax.device_count()} device(s))"
with open(path, "w") as f:
  json.dump(timings, f, indent=1)
PY
echo "Wrote $workdir/samples/guidance_sweep.png, $workdir/eval/eval.json and $timings." >&2
