#!/usr/bin/env bash
# The recipe study of docs/quality.md on one GPU, in one call of a few minutes:
#  1. finished workdirs (RUNS_FROM, e.g. CPU runs carried to the machine) are evaluated with the issue's
#     protocol (1,000 samples per guidance scale), once per sampler setting in EVALS;
#  2. meanwhile several `configs/mnist_cpu.py` recipes train side by side for STEPS steps and are evaluated the
#     same way (100-step DDPM).
# Everything computes in float32 at full matmul precision, as on a CPU, so each recipe is the GPU twin of a CPU
# run of that many steps: the GPU buys the study's wall time; the CPU's measured steps per second turn steps
# into training minutes. Training is one batch per step (no microbatches): the same gradient as the CPU's
# accumulation over two halves, in half the kernel launches.
#
# Usage: bash scripts/study_gpu.sh OUT_DIR. Environment:
#   STEPS        training steps of every recipe (default 2200)
#   ONLY         recipe names to train, space-separated (default all; "none" trains none)
#   RUNS_FROM    a folder of finished workdirs to evaluate (default: none)
#   EVALS        sampler settings for RUNS_FROM, "name|overrides" separated by ";" (default "ddpm100|"); runs
#                of another width than mnist_cpu's need its overrides here too
#   SCALES       guidance scales (default "(1., 2., 3., 4., 5., 7.)")
#   TRAIN_LIMIT  seconds after the start at which training still running is stopped with SIGTERM: it saves a
#                checkpoint and is evaluated at the step it reached, which its report names (default 400)
#   LIMIT        seconds after the start at which every job still running is killed (default 540)
# The tiny model leaves the GPU idle most of the time, so the recipes are bound by compiling and by the host:
# docs/quality.md gives the times measured on an H200, to size ONLY and the limits to a call.
#   CONFIG       the config every recipe starts from (default configs/mnist_cpu.py)
#   RECIPES      "name|overrides" separated by ";": these recipes instead of the built-in ones, on CONFIG as it
#                is (not the study's 32-channel starting point), e.g. the scene study of docs/results.md
#   PER_DIGIT    samples per prompt in every evaluation (default 100)
#   SAMPLE_BATCH samples per sampling call (default 1000)
#   DRY_RUN=1    configs/tiny.py, 4 steps, 2 samples per digit, its own quick classifier: a check on CPU
set -uo pipefail
out_dir=${1:?usage: scripts/study_gpu.sh OUT_DIR}
steps=${STEPS:-2200}
scales=${SCALES:-"(1., 2., 3., 4., 5., 7.)"}
train_limit=${TRAIN_LIMIT:-400}
limit=${LIMIT:-540}
config=${CONFIG:-configs/mnist_cpu.py}
extra=()
# The study's starting point, mnist_cpu before the study: 32 channels, a constant rate, plain L_simple.
study_base="--config.model.model_channels=32 --config.model.num_groups=32 --config.model.num_head_channels=64"
study_base+=" --config.train.min_snr_gamma=0 --config.train.lr_schedule=constant"
[[ -n "${RECIPES:-}" ]] && study_base=""
per_digit=${PER_DIGIT:-100} sample_batch=${SAMPLE_BATCH:-1000}
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  steps=4 per_digit=2 sample_batch=20 scales="(1., 3.)"
  [[ -z "${RECIPES:-}" ]] && config=configs/tiny.py \
    study_base="--config.train.min_snr_gamma=0 --config.train.lr_schedule=constant"  # tiny keeps its width.
  extra=(--config.eval.classifier_steps=3 "--config.eval.classifier_dir=$out_dir/classifier")
fi
mkdir -p "$out_dir/runs"
export PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false
export GLIDE_JAX_CACHE_DIR=${GLIDE_JAX_CACHE_DIR:-$out_dir/compilation_cache}
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
start=$SECONDS

# name | overrides. Every recipe is mnist_cpu with $study_base plus these.
msc="--config.train.min_snr_gamma=5 --config.train.lr_schedule=cosine"
recipes=(
  "baseline|"
  "minsnr|--config.train.min_snr_gamma=5"
  "cosine|--config.train.lr_schedule=cosine"
  "minsnr_cosine|$msc"
  "minsnr_cosine_seed1|$msc --config.seed=1"
  "minsnr_cosine_ema9995|$msc --config.train.ema_decay=0.9995"
  "minsnr_cosine_lr2e3|$msc --config.train.learning_rate=2e-3"
)
[[ -n "${RECIPES:-}" ]] && IFS=';' read -ra recipes <<<"$RECIPES"
eval_flags=(--mode=eval --config.model.dtype=float32 --config.sample.respacing=100
            --config.eval.samples_per_digit=$per_digit --config.sample.batch_size=$sample_batch
            "--config.sample.guidance_scales=$scales" "${extra[@]}")

left() { echo $(( $1 - (SECONDS - start) )); }  # Seconds from now until $1 seconds after the start.

evaluate() {  # workdir name overrides log: evaluate a workdir's latest checkpoint into workdir/eval_<name>
  local workdir=$1 name=$2 overrides=$3 log=$4 t0=$SECONDS
  (( $(left "$limit") > 0 )) || { echo "$(basename "$workdir") $name: not evaluated (past ${limit} s)"; return; }
  # shellcheck disable=SC2086  # The overrides are separate words.
  timeout "$(left "$limit")" python3 main.py --config=$config --workdir="$workdir" "${eval_flags[@]}" $overrides \
      >>"$log" 2>&1 || { echo "$(basename "$workdir") $name: eval failed or cut off (see $log)"; return; }
  rm -rf "$workdir/eval_$name" && mv "$workdir/eval" "$workdir/eval_$name"
  echo "$(basename "$workdir") $name: evaluated in $((SECONDS - t0)) s"
}

train_and_evaluate() {  # name overrides
  local name=$1 overrides="$study_base $2" workdir=$out_dir/runs/$1 log=$out_dir/$1.log t0=$SECONDS
  # shellcheck disable=SC2086
  timeout -s TERM "$(left "$train_limit")" python3 main.py --config=$config --workdir="$workdir" \
      --config.model.dtype=float32 --config.train.microbatch_size=0 --config.train.num_steps="$steps" \
      --config.train.sample_every=0 --config.train.checkpoint_every="$steps" $overrides "${extra[@]}" >"$log" 2>&1
  local rc=$?
  [[ -d "$workdir/checkpoints" ]] || { echo "$name: training failed, rc $rc (see $log)"; return; }
  echo "$name: training ended after $((SECONDS - t0)) s, rc $rc"
  evaluate "$workdir" ddpm100 "$overrides" "$log"
}

pids=()
if [[ -n "${RUNS_FROM:-}" ]]; then
  IFS=';' read -ra evals <<<"${EVALS:-ddpm100|}"
  for workdir in "$RUNS_FROM"/*/; do
    ( for e in "${evals[@]}"; do
        IFS='|' read -r name overrides <<<"$e"
        evaluate "${workdir%/}" "$name" "$overrides" "$out_dir/$(basename "$workdir")_eval.log"
      done ) & pids+=($!)
  done
fi
# The recipes share the GPU (none comes near filling it) and the host's cores (compiling is CPU work).
for r in "${recipes[@]}"; do
  IFS='|' read -r name overrides <<<"$r"
  if [[ -z "${ONLY:-}" || " $ONLY " == *" $name "* ]]; then
    train_and_evaluate "$name" "$overrides" & pids+=($!)
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "done after $((SECONDS - start)) s"

# One line per evaluation: the run, its sampler, the step, every scale, and the best scale by accuracy then FID.
python3 - "$out_dir" ${RUNS_FROM:+"$RUNS_FROM"} <<'EOF' | tee "$out_dir/summary.txt"
import glob, json, os, sys
for root in sys.argv[1:]:
  for path in sorted(glob.glob(os.path.join(root, "**", "eval_*", "eval.json"), recursive=True)):
    r = json.load(open(path))
    run = os.path.relpath(os.path.dirname(path), root)
    if "fully_right" in r["results"][0]:  # A scene model: the share fully right, per caption template.
      for x in r["results"]:
        templates = " ".join(f"{k} {v:.2f}" for k, v in x["by_template"].items())
        print(f"{run}: step {r['step']}, g{x['guidance_scale']:g} fully right {x['fully_right']:.3f} "
              f"FID {x['fid']:.1f} | {templates}")
      continue
    best = max(r["results"], key=lambda x: (x["accuracy"], -x["fid"]))
    row = " ".join(f"g{x['guidance_scale']:g} {x['accuracy']:.3f}/{x['fid']:.1f}" for x in r["results"])
    print(f"{run}: step {r['step']}, {r['config']['sampler']} {r['config']['respacing'] or 'all'}, "
          f"{r['config']['samples_per_digit']}/digit, real FID {r['real']['fid']:.1f} | {row} | best "
          f"g{best['guidance_scale']:g}: acc {best['accuracy']:.3f} FID {best['fid']:.1f} "
          f"div {best['diversity']:.2f} worst digit {min(best['per_digit_accuracy']):.2f}")
EOF
