#!/usr/bin/env bash
# The full `mnist` config's training and guided-sampling speed on one accelerator, float32 and bfloat16,
# on synthetic data (MNIST need not be on the machine). On an H100 each compile takes 65-90 s, so the
# whole script takes about 10 minutes. Usage: bash scripts/benchmark_gpu.sh [OUT_DIR]
set -uo pipefail
out_dir=${1:-benchmark_results}
mkdir -p "$out_dir"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
run() {  # name, then benchmark flags
  local name=$1; shift
  timeout 300 python3 -m glide_jax.benchmark --config=configs/mnist.py --synthetic --json="$out_dir/$name.json" "$@" \
      2>&1 | grep -E "^(batch|sample) |Error" || echo "$name: failed or timed out"
}
for dtype in float32 bfloat16; do
  run "train_$dtype" --config.model.dtype="$dtype" --batch=32 --batch=128 --steps=10
  run "sample_$dtype" --config.model.dtype="$dtype" --skip_train --sample_batch=16 --sample_batch=64 --sample_steps=50
done
