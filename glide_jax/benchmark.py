"""`python -m glide_jax.benchmark --config=configs/mnist_cpu.py [--batch=32]` is
`python main.py --mode=benchmark ...` (glide_jax/modes/benchmark.py); kept for the commands already in use."""

if __name__ == "__main__":
  from glide_jax import cli

  cli.launch("benchmark")
