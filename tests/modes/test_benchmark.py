"""--mode=benchmark: its figures for a config, the chip peak table behind MFU, and the count of work-doing
operations in a compiled step."""

import json

import jax
import jax.numpy as jnp
import pytest

from glide_jax import runtime
from glide_jax.errors import UserError
from glide_jax.modes import benchmark
from glide_jax.modes.benchmark import chip_peak_tflops, compiled_op_count
from helpers.runs import tiny_config


@pytest.mark.parametrize("kind,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),
    ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA H200", "bfloat16", 989.4),
    ("NVIDIA A100-SXM4-40GB", "float32", 156.0),
    ("NVIDIA L4", "bfloat16", 121.0),
    ("TPU v4", "bfloat16", 275.0),
    ("TPU v5 lite", "bfloat16", 197.0),
    ("TPU v5", "bfloat16", 459.0),
    ("TPU v6 lite", "float32", 918.0),
    ("cpu", "float32", None),
])
def test_chip_peaks(kind, dtype, peak):
  assert chip_peak_tflops(kind, dtype) == peak


def test_compiled_op_count_counts_work_not_plumbing():
  hlo = """HloModule m

%fused (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %t = f32[4]{0} tanh(%p)
}

ENTRY %main (a: f32[4], b: f32[4,4]) -> (f32[4], f32[4]) {
  %a = f32[4]{0} parameter(0)
  %b = f32[4,4]{1,0} parameter(1)
  %c = f32[] constant(1)
  %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused
  %g = (f32[4]{0}, s8[16]{0}) custom-call(%b, %f), custom_call_target="__cublas$gemm"
  %e = f32[4]{0} get-tuple-element(%g), index=0
  %r = f32[4]{0} all-reduce(%e), to_apply=%fused
  ROOT %out = (f32[4]{0}, f32[4]{0}) tuple(%f, %r)
}
"""
  assert compiled_op_count(hlo) == 3  # The fusion, the library call and the all-reduce.
  assert compiled_op_count("no module") == 0


def test_compiled_op_count_of_a_real_program_grows_with_its_work():
  one = jax.jit(lambda x: jnp.sin(x) @ x).lower(jnp.ones((8, 8))).compile().as_text()
  two = jax.jit(lambda x: jnp.sort(jnp.sin(x) @ x, axis=0) @ x).lower(jnp.ones((8, 8))).compile().as_text()
  assert 1 <= compiled_op_count(one) < compiled_op_count(two)


def test_the_benchmark_times_the_train_step_and_sampling_of_a_config(tmp_path):
  out = tmp_path / "figures.json"
  figures = benchmark.run(tiny_config(), steps=1, sample_batch=[2], sample_steps=2, synthetic=True,
                          json=str(out))
  (train,) = figures["train"]
  assert train["batch"] == 16 and train["devices"] == jax.device_count()
  assert train["train_step_s"] > 0 and train["images_per_s"] == pytest.approx(16 / train["train_step_s"])
  assert train["model_flops_per_step"] > 0 and train["compiled_ops"] > 0 and train["mfu"] is None  # A CPU.
  (sampling,) = figures["sampling"]
  assert sampling["samples"] == 2 and sampling["sample_step_s"] > 0
  assert figures["machine"] == runtime.describe_machine()  # Every figure names its CPU.
  with open(out) as f:
    assert json.load(f) == figures


@pytest.mark.parametrize("options,message", [
    (dict(steps=0), r"--steps=0: give a count of at least 1 \(e\.g\. --steps=5\)"),
    (dict(sample_batch=[16, 0]), r"--sample_batch=0: give a count of at least 1"),
    (dict(batch=[-8]), r"--batch=-8: give a count of at least 1"),
    (dict(sample_steps=0), r"--sample_steps=0: give a count"),
    (dict(peak_tflops=0.0), r"--peak_tflops=0\.0: give the chip's peak in TFLOP/s, a positive number"),
    (dict(json="/nonexistent/figures.json"), r"--json=/nonexistent/figures\.json: cannot write the results there "
                                             r"\(no writable directory /nonexistent\)"),
])
def test_bad_benchmark_options_are_refused_before_any_work(options, message):
  with pytest.raises(UserError, match=message):
    benchmark.run(tiny_config(), **options)
