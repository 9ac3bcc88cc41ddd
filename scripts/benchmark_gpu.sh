#!/usr/bin/env bash
# The full `mnist` config's training step on one accelerator, synthetic data: each speed change against the
# code before it, the throughput at larger batches, MFU, and the compile time with a warm compilation cache.
#
# Phase 1 compiles the variants PARALLEL at a time (compiling is CPU work and the machine has many cores)
# into a fresh persistent compilation cache; phase 2 times them one at a time, each loading its program from
# that cache, so its compile column is a second run's compile time. A variant that fails (say, cuDNN
# attention on a GPU that lacks it) is reported and skipped. On an H200 with 16 cores one compile takes
# 55-70 s alone and about 220 s with 7 at once, so all 11 variants take about 10 minutes: pick with ONLY.
#
# Usage: bash scripts/benchmark_gpu.sh [OUT_DIR]. Environment: ONLY (variant names to run, space-separated;
# default all), PARALLEL (compiles at once, default 6), CONFIG (default configs/mnist.py), STEPS (timed
# steps, default 20), DEADLINE (seconds after which phase 2 starts no new variant, default 480), DRY_RUN=1
# (batches of 4, 2 steps: a quick check of the script on CPU with CONFIG=configs/tiny.py).
set -uo pipefail
out_dir=${1:-benchmark_results}
config=${CONFIG:-configs/mnist.py}
steps=${STEPS:-20}
parallel=${PARALLEL:-6}
deadline=${DEADLINE:-480}
mkdir -p "$out_dir"
export GLIDE_JAX_CACHE_DIR="$out_dir/compilation_cache" XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

# name | extra XLA_FLAGS | config overrides | batch size. "before": the kernels of the code before the speed
# work (bfloat16, XLA attention, GroupNorm moments as dot products); "default": what "auto" picks on the chip.
before="--config.model.dtype=bfloat16 --config.model.attention_impl=xla --config.model.norm_impl=dot"
all_variants=(
  "before||$before|128"
  "before_512||$before|512"
  "before_1024||$before|1024"
  "reduce_norm||--config.model.dtype=bfloat16 --config.model.attention_impl=xla --config.model.norm_impl=reduce|128"
  "default|||128"
  "default_256|||256"
  "default_512|||512"
  "default_1024|||1024"
  "no_command_buffers|--xla_gpu_enable_command_buffer=||128"
  "float32||--config.model.dtype=float32|128"
)
variants=()
for v in "${all_variants[@]}"; do
  if [[ -z "${ONLY:-}" || " $ONLY " == *" ${v%%|*} "* ]]; then variants+=("$v"); fi
done

bench() {  # phase name xla overrides batches steps limit: one benchmark process, its output in $out_dir/$phase_$name.{log,json}
  local phase=$1 name=$2 xla=$3 overrides=$4 batches=$5 timed=$6 limit=$7
  local batch_flags=("--batch=$batches")
  [[ "${DRY_RUN:-0}" == 1 ]] && batch_flags=(--batch=4)
  # shellcheck disable=SC2086  # The overrides are separate words.
  XLA_FLAGS="${XLA_FLAGS:-} $xla" timeout "$limit" python3 -m glide_jax.benchmark --config="$config" --synthetic \
      --steps="$timed" $overrides "${batch_flags[@]}" --json="$out_dir/${phase}_$name.json" \
      >"$out_dir/${phase}_$name.log" 2>&1 || echo "$phase $name: failed or timed out (see $out_dir/${phase}_$name.log)"
}

split() {  # One variant line into name, xla, overrides, batch size.
  IFS='|' read -r name xla overrides batches <<<"$1"
}

echo "phase 1: compiling ${#variants[@]} variants, $parallel at a time"
for v in "${variants[@]}"; do
  while (( $(jobs -rp | wc -l) >= parallel )); do wait -n; done
  split "$v"
  bench compile "$name" "$xla" "$overrides" "$batches" 1 300 &
done
wait
echo "phase 1 done after ${SECONDS} s; phase 2: timing one variant at a time"
for v in "${variants[@]}"; do
  split "$v"
  if (( SECONDS > deadline )); then echo "time $name: skipped (past the ${deadline} s deadline)"; continue; fi
  bench time "$name" "$xla" "$overrides" "$batches" "$steps" 150
  grep -E "^batch " "$out_dir/time_$name.log" | sed "s/^/$name: /"
done
echo "done after ${SECONDS} s"

python3 - "$out_dir" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
print("\n| variant | dtype | attention | norm | batch | step (ms) | img/s | TFLOP/step | MFU | ops | compile: cold / cached (s) | peak GB |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for path in sorted(glob.glob(os.path.join(out, "time_*.json")), key=os.path.getmtime):
  name = os.path.basename(path)[5:-5]
  cold = {}
  if os.path.exists(os.path.join(out, f"compile_{name}.json")):
    cold = {r["batch"]: r["compile_s"] for r in json.load(open(os.path.join(out, f"compile_{name}.json")))["train"]}
  for r in json.load(open(path))["train"]:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    print(f"| {name} | {r['dtype']} | {r['attention_impl']} | {r['norm_impl']} | {r['batch']} | "
          f"{1000 * r['train_step_s']:.1f} | {r['images_per_s']:,.0f} | {r['model_flops_per_step'] / 1e12:.2f} | {mfu} | "
          f"{r['compiled_ops']} | {cold.get(r['batch'], float('nan')):.0f} / {r['compile_s']:.1f} | "
          f"{r['peak_device_gb'] or r['peak_rss_gb']:.1f} |")
EOF
