#!/usr/bin/env bash
# CPU speed levers, each an A/B against the defaults on the same machine: one benchmark process per variant
# (XLA reads its flags once per process), one at a time (two CPU jobs at once slow each other several-fold),
# then a table of train-step and guided-sampling-step medians. docs/benchmarks.md has the results.
#
# Usage: bash scripts/benchmark_cpu.sh [OUT_DIR]. Environment: ONLY (variant names, space-separated; default
# all), CONFIG (default configs/mnist_cpu.py), OVERRIDES (config overrides for every variant, e.g. the 32-channel
# model: "--config.model.model_channels=32 --config.model.num_groups=32 --config.model.num_head_channels=64"),
# BATCH (default 32), SAMPLE_BATCH (default 16), STEPS (timed steps, default 8).
set -uo pipefail
out_dir=${1:-benchmark_results/cpu}
config=${CONFIG:-configs/mnist_cpu.py}
mkdir -p "$out_dir"
lscpu | grep -E "Model name" ; grep -o -w -E "avx512f|avx512_bf16|amx_bf16" /proc/cpuinfo | sort -u | tr '\n' ' '; echo
python3 -c "import jax; print('jax', jax.__version__)" || exit 1

# name | environment | extra XLA_FLAGS | config overrides. "arena_per_thread": glibc's default allocator set-up,
# which glide-jax replaces at start-up (glide_jax/runtime.py: use_one_malloc_arena).
all_variants=(
  "default|||"
  "arena_per_thread|MALLOC_ARENA_MAX=16||"
  "bfloat16|||--config.model.dtype=bfloat16"
  "onednn||--xla_cpu_use_onednn=true|"
  "ynn_eltwise_reduce||--xla_cpu_experimental_ynn_fusion_type=+eltwise,+reduce|"
  "no_ynn||--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-individual_convolution|"
  "xnn_graph||--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY|"
  "fast_runtime_preset||--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_RUNTIME|"
  "default_scheduler||--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT|"
  "norm_reduce|||--config.model.norm_impl=reduce"
  "no_microbatch|||--config.train.microbatch_size=0"
  "microbatch_8|||--config.train.microbatch_size=8"
)
printf "%-20s %12s %12s\n" variant "train step" "sample step"
for v in "${all_variants[@]}"; do
  IFS='|' read -r name environment xla overrides <<<"$v"
  [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]] && continue
  # shellcheck disable=SC2086  # The environment and overrides are separate words.
  env $environment XLA_FLAGS="${XLA_FLAGS:-} $xla" python3 -m glide_jax.benchmark --config="$config" --synthetic \
      --steps="${STEPS:-8}" --batch="${BATCH:-32}" --sample_batch="${SAMPLE_BATCH:-16}" ${OVERRIDES:-} $overrides \
      --json="$out_dir/$name.json" >"$out_dir/$name.log" 2>&1 || { echo "$name: failed (see $out_dir/$name.log)"; continue; }
  python3 - "$out_dir/$name.json" "$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:20s} {r['train'][0]['train_step_s']:10.4f} s {r['sampling'][0]['sample_step_s']:10.4f} s")
PY
done
