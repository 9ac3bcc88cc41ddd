"""scripts/: the lesson's reproduction runs end to end (dry run with the tiny config, as CI can afford)."""

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig

import jax
import numpy as np
import pytest

from glide_jax.errors import UserError
from glide_jax.experiment import Experiment
from helpers.paths import REPO, load_script
from helpers.runs import (
  checkpoint_steps,
  classifier_flags,
  main_env,
  metric_steps,
  read,
  restore_checkpoint,
  tiny_config,
  wait_until,
)
from helpers.trees import assert_trees_equal

SCRIPT = os.path.join(REPO, "scripts", "reproduce_lesson.sh")


def test_reproduce_lesson_dry_run_with_the_tiny_config(tmp_path, tiny_classifier_dir):
  """The three stages end to end. The lesson's 100-step sampler is replaced by 2 steps here (an override,
  as a user gives one; that every stage receives it is asserted): its command lines are pinned by the
  next test, without running anything."""
  workdir = tmp_path / "lesson"
  env = dict(main_env(), CONFIG="configs/tiny.py", PER_CELL="1")
  result = subprocess.run(
      ["bash", SCRIPT, str(workdir), "--config.train.num_steps=2", "--config.sample.respacing=2",
       *classifier_flags(tiny_classifier_dir)],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  assert checkpoint_steps(str(workdir)) == [2]
  assert (workdir / "samples" / "guidance_sweep.png").is_file()
  with open(workdir / "eval" / "eval.json") as f:
    report = json.load(f)
  assert [r["guidance_scale"] for r in report["results"]] == [0.0, 1.0, 2.0, 4.0, 7.0, 10.0, 20.0]
  assert report["config"]["samples_per_digit"] == 7 and report["config"]["sampling_steps"] == 2
  with open(workdir / "timings.json") as f:
    timings = json.load(f)
  assert set(timings) == {"train_s", "sample_s", "eval_s", "device"} and timings["device"].startswith("cpu")
  assert all(timings[k] > 0 for k in ("train_s", "sample_s", "eval_s"))
  # A stage rerun alone keeps the other stages' figures.
  rerun = subprocess.run(["bash", SCRIPT, str(workdir),
                          "--config.train.num_steps=2"], cwd=tmp_path, env=dict(env, STAGES="train"),
                         capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-4000:]
  with open(workdir / "timings.json") as f:
    assert set(json.load(f)) == set(timings)


def test_reproduce_lesson_runs_the_lessons_sampler_and_sweep_at_every_stage(tmp_path):
  """The commands the script runs, recorded by a stand-in `python3` on PATH: the lesson's 100-step sampler,
  its 7 guidance scales and one sampling batch for the sweep and the evaluation, with the user's overrides
  last (so they win)."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "calls.txt"
  bin_dir.mkdir()
  (bin_dir / "python3").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\n')
  (bin_dir / "python3").chmod(0o755)
  workdir = tmp_path / "lesson"
  env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "PER_CELL", "STAGES")}  # The defaults.
  env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
  result = subprocess.run(["bash", SCRIPT, str(workdir), "--config.model.dtype=float32"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr[-4000:]
  calls_made = read(calls).splitlines()
  lines = [line for line in calls_made if line.startswith("main.py ")]
  assert len(lines) == 3, calls_made
  assert calls_made[-1].startswith(f"- {workdir}/timings.json train "), calls_made  # Then the timings file.
  common = (f"main.py --config=configs/mnist.py --workdir={workdir} --config.sample.guidance_scales=(0.,1.,2.,4.,7.,"
            f"10.,20.) --config.sample.respacing=100 --config.sample.batch_size=280")
  assert lines[0] == f"{common} --mode=train --config.model.dtype=float32"
  assert lines[1] == f"{common} --mode=sample --config.sample.num_per_prompt=4 --config.model.dtype=float32"
  assert lines[2] == f"{common} --mode=eval --config.eval.samples_per_digit=28 --config.model.dtype=float32"


def test_sigterm_to_the_script_reaches_training_which_saves_and_stops(tmp_path):
  """As `timeout` or a scheduler does: the signal goes to the script's process alone."""
  workdir = tmp_path / "lesson"
  out, err = tmp_path / "out.txt", tmp_path / "err.txt"
  with open(out, "w") as stdout, open(err, "w") as stderr:
    proc = subprocess.Popen(
        ["bash", SCRIPT, str(workdir), "--config.train.num_steps=10000", "--config.train.checkpoint_every=1000",
         "--config.train.log_every=2"], cwd=tmp_path, stdout=stdout, stderr=stderr,
        env=dict(main_env(), CONFIG="configs/tiny.py", STAGES="train sample eval"))
  try:
    assert wait_until(lambda: metric_steps(str(workdir)) or proc.poll() is not None, timeout=300), read(err)[-3000:]
    assert proc.poll() is None, read(err)[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, read(err)[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  stopped = re.search(r"Stopped by SIGTERM after step (\d+): checkpoint saved", read(out))
  assert stopped, read(out) + read(err)[-3000:]
  assert checkpoint_steps(str(workdir)) == [int(stopped.group(1))]
  assert "Stopped by SIGTERM during the train stage; rerun the same command to resume." in read(err)
  assert not (workdir / "samples").exists() and not (workdir / "eval").exists()  # Later stages skipped.


CARRY = os.path.join(REPO, "scripts", "carry_params.py")


def _carry_module():
  return load_script("carry_params")


def _carry(*args):
  return subprocess.run([sys.executable, CARRY, *args], cwd=REPO, env=main_env(), capture_output=True, text=True,
                        timeout=300)


def test_carry_params_moves_a_runs_ema_parameters_into_a_new_workdir(tmp_path):
  config = tiny_config()
  exp = Experiment(config, str(tmp_path / "run"))
  state = exp.init_fn()
  # An EMA unlike the raw parameters, at a step other than 0, so that the test tells them apart.
  state = state.replace(step=state.step + 7, ema_params=jax.tree_util.tree_map(lambda p: p + 1, state.ema_params))
  with exp.checkpointer() as checkpointer:
    checkpointer.save(7, state, config)

  npz = tmp_path / "run.npz"
  exported = _carry("export", f"--workdir={tmp_path / 'run'}", f"--npz={npz}")
  assert exported.returncode == 0, exported.stderr[-4000:]
  imported = _carry("import", f"--npz={npz}", f"--workdir={tmp_path / 'moved'}")
  assert imported.returncode == 0, imported.stderr[-4000:]
  assert "imported step 7" in imported.stdout

  moved = restore_checkpoint(config, tmp_path / "moved")
  assert int(moved.step) == 7
  assert_trees_equal(moved.ema_params, jax.device_get(state.ema_params))
  assert_trees_equal(moved.params, jax.device_get(state.ema_params))

  # A workdir that has checkpoints is left alone, and a file of another model is refused before anything is written.
  again = _carry("import", f"--npz={npz}", f"--workdir={tmp_path / 'moved'}")
  assert again.returncode == 2 and "already holds checkpoints" in again.stderr and "Traceback" not in again.stderr
  assert checkpoint_steps(str(tmp_path / "moved")) == [7]
  with np.load(npz) as f:
    files = {k: f[k] for k in f.files}
  files.pop(sorted(k for k in files if not k.startswith("__"))[0])
  np.savez(tmp_path / "other.npz", **files)
  other = _carry("import", f"--npz={tmp_path / 'other.npz'}", f"--workdir={tmp_path / 'other'}")
  assert other.returncode == 2 and "does not hold this model's parameters" in other.stderr
  assert not (tmp_path / "other" / "checkpoints").exists()


@pytest.mark.parametrize("kind,message", [
    ("missing", r"does not exist; give a file written by `carry_params.py export`"),
    ("random", r"is not a readable \.npz of arrays \(ValueError: This file contains pickled"),
    ("objects", r"is not a readable \.npz of arrays \(ValueError: Object arrays cannot be loaded"),
    ("foreign", r"was not written by `carry_params.py export`: it has no __step__ and __config__"),
])
def test_importing_a_file_that_is_not_an_export_is_a_user_error(tmp_path, kind, message):
  path = tmp_path / "params.npz"
  if kind == "random":
    path.write_bytes(np.random.default_rng(0).bytes(1000))
  elif kind == "objects":
    np.savez(path, weights=np.array([{"w": 1}], dtype=object))
  elif kind == "foreign":
    np.savez(path, weights=np.zeros(3))
  with pytest.raises(UserError, match=message):
    _carry_module().import_params(str(path), str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("target", ["a_directory", "missing/params.npz", "params"])
def test_exporting_to_a_path_that_is_not_a_new_npz_file_is_a_user_error(tmp_path, target):
  (tmp_path / "a_directory").mkdir()
  with pytest.raises(UserError, match=r"give the path of a new \.npz file in an existing directory"):
    _carry_module().export_params(str(tmp_path / "run"), str(tmp_path / target))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_directory"]


@pytest.mark.parametrize("name", ["mnist_cpu32", "mnist"])
def test_torch_reference_presets_are_the_configs_they_stand_for(name):
  """The PyTorch reference of docs/benchmarks.md times the shapes glide-jax's benchmark times: every preset
  field equals its config's (with the preset's overrides), and the schedule is the config's."""
  from glide_jax.diffusion.schedules import get_named_beta_schedule
  from glide_jax.model.tokenizer import get_tokenizer

  reference = load_script("torch_reference")
  preset = reference.PRESETS[name]
  config = load_script("profile_step").load_config(os.path.join(REPO, preset["config"]), [])
  for key, value in preset["overrides"].items():
    config.model[key] = value
  m = config.model
  assert preset["model_channels"] == m.model_channels and preset["num_head_channels"] == m.num_head_channels
  assert m.num_groups == 32  # glide-text2im's GroupNorm32 has 32 groups.
  assert (preset["channel_mult"], preset["attention_resolutions"]) == (tuple(m.channel_mult),
                                                                      tuple(m.attention_resolutions))
  assert (preset["num_res_blocks"], preset["dropout"], preset["text_ctx"]) == (m.num_res_blocks, m.dropout,
                                                                              m.text_ctx)
  assert (preset["xf_width"], preset["xf_layers"], preset["xf_heads"]) == (m.xf_width, m.xf_layers, m.xf_heads)
  assert preset["vocab_size"] == get_tokenizer(m.tokenizer).vocab_size
  assert m.learn_sigma and not m.conv_resample and not m.resblock_updown and not m.position_embedding
  assert (preset["image_size"], preset["channels"]) == (config.data.image_size, config.data.channels)
  assert preset["min_snr_gamma"] == config.train.min_snr_gamma
  assert (config.train.p_uncond, config.train.grad_clip, config.diffusion.num_timesteps) == (
      reference.P_UNCOND, 1.0, reference.NUM_TIMESTEPS)
  np.testing.assert_allclose(reference.cosine_betas(reference.NUM_TIMESTEPS),
                             get_named_beta_schedule(config.diffusion.noise_schedule, 1000), rtol=1e-12)


def test_torch_reference_without_glide_text2im_says_where_to_get_it(tmp_path, capsys):
  assert load_script("torch_reference").main([f"--glide_text2im={tmp_path}"]) == 2
  assert "clone https://github.com/openai/glide-text2im and pass its path as --glide_text2im" in capsys.readouterr().err


# A compiled module's shape as XLA:CPU prints it: fused computations first, then the entry.
_HLO = """HloModule jit_train_step

%fused_computation.1 (param_0: f32[8,3,3,4], param_1: f32[3,3,4,4]) -> f32[8,3,3,4] {
  %param_0 = f32[8,3,3,4]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,4,4]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[8,3,3,4]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3}
}

%fused_computation.2 (param_0.1: f32[8,4]) -> f32[8] {
  %param_0.1 = f32[8,4]{1,0} parameter(0)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(%param_0.1, %constant.1), dimensions={1}, to_apply=%add
}

%fused_computation.3 (param_0.2: f32[8,4]) -> f32[8,4] {
  %param_0.2 = f32[8,4]{1,0} parameter(0)
  ROOT %multiply.1 = f32[8,4]{1,0} multiply(%param_0.2, %param_0.2)
}

ENTRY %main.9 (Arg_0.1: f32[8,3,3,4], Arg_1.2: f32[3,3,4,4]) -> f32[8] {
  %Arg_0.1 = f32[8,3,3,4]{3,2,1,0} parameter(0)
  %Arg_1.2 = f32[3,3,4,4]{3,2,1,0} parameter(1)
  %ynn_fusion.1 = f32[8,3,3,4]{3,2,1,0} fusion(%Arg_0.1, %Arg_1.2), kind=kCustom, calls=%fused_computation.1, YNN
  %bitcast.1 = f32[8,4]{1,0} bitcast(%Arg_0.1)
  %multiply_fusion = f32[8,4]{1,0} fusion(%bitcast.1), kind=kLoop, calls=%fused_computation.3
  %reduce_fusion = f32[8]{0} fusion(%multiply_fusion), kind=kInput, calls=%fused_computation.2
  ROOT %all-reduce.1 = f32[8]{0} all-reduce(%reduce_fusion), replica_groups={{0,1}}, to_apply=%add
}
""".replace("YNN", 'backend_config={"fusion_config":{"kind":"__ynn_fusion"}}')


def test_profile_step_sorts_device_time_by_kind_of_operation():
  """scripts/profile_step.py's reading of a trace: each event named after an instruction of the compiled step
  counts for that instruction's kind, per step; other events (Python, the runtime) do not count."""
  profile = load_script("profile_step")
  kinds = profile.operation_kinds(_HLO)
  assert {k: kinds[k] for k in ("ynn_fusion.1", "multiply_fusion", "reduce_fusion", "all-reduce.1")} == {
      "ynn_fusion.1": "YNNPACK convolution", "multiply_fusion": "elementwise fusion",
      "reduce_fusion": "reduction fusion", "all-reduce.1": "collective"}
  events = [{"ph": "X", "name": "ynn_fusion.1", "dur": 3000.0}, {"ph": "X", "name": "ynn_fusion.1", "dur": 1000.0},
            {"ph": "X", "name": "all-reduce.1", "dur": 500.0}, {"ph": "X", "name": "PjitFunction(train_step)",
                                                                "dur": 9e6}, {"ph": "M", "name": "reduce_fusion"}]
  by_kind, by_op = profile.device_time(events, kinds, steps=2)
  assert by_kind == [("YNNPACK convolution", 0.002, 1.0), ("collective", 0.00025, 0.5)]
  assert [name for name, _, _ in by_op] == ["ynn_fusion.1", "all-reduce.1"]


def test_profile_step_reads_the_config_with_overrides():
  config = load_script("profile_step").load_config(os.path.join(REPO, "configs", "mnist_cpu.py"), [
      "model.model_channels=32", "model.channel_mult=(1, 2)", "model.dtype=bfloat16"])
  assert (config.model.model_channels, tuple(config.model.channel_mult), config.model.dtype) == (32, (1, 2), "bfloat16")
  assert config.train.num_steps == 6000


def test_compile_log_sees_every_process_and_names_its_cache_misses_and_hits(tmp_path):
  """Two processes jit the same function under one persistent cache: the first compiles, the second loads it
  under the same key; the start-up hook is gone from site-packages afterwards."""
  compile_log = load_script("compile_log")
  program = ("import jax, jax.numpy as jnp; jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
             "jax.jit(lambda x: x * 3 + 1)(jnp.ones(5)).block_until_ready()")
  log = tmp_path / "log.jsonl"
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "compile_log.py"), f"--log={log}", "--",
                           "bash", "-c", f'"{sys.executable}" -c "{program}"; "{sys.executable}" -c "{program}"'],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [r for r in compile_log.read_log(str(log)) if r["fun"] == "jit(<lambda>)"
          and r["event"] == "backend_compile_duration"]
  assert [compile_log.kind(r) for r in rows] == ["compile", "load"]
  assert len({r["pid"] for r in rows}) == 2 and rows[0]["key"] == rows[1]["key"] != ""
  assert "programs compiled more than once under one cache key: 0" in result.stdout
  assert not os.path.exists(os.path.join(sysconfig.get_paths()["purelib"], compile_log.PTH_NAME))

  a, b = "tests/test_a.py::test_one (call)", "tests/test_b.py::test_two (call)"
  text = compile_log.report([dict(rows[0], test=a), dict(rows[0], test=b), dict(rows[1], test=b)])
  assert "programs compiled more than once under one cache key: 1 (1 extra compiles)" in text
  assert re.search(r"tests/test_b\.py +0\.0 +0\.0 +[\d.]+ +[\d.]+", text), text
