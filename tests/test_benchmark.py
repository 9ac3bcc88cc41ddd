"""The benchmark's derived figures: the chip peak table behind MFU, and the count of work-doing operations
in a compiled step."""

import jax
import jax.numpy as jnp
import pytest

from glide_jax.benchmark import chip_peak_tflops, compiled_op_count


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
