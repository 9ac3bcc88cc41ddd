"""glide-jax: train, sample, edit, evaluate, convert or benchmark a GLIDE model.

  python main.py --config=configs/mnist_cpu.py --workdir=runs/mnist            # train (resumes)
  python main.py --config=configs/mnist_cpu.py --workdir=runs/mnist --mode=sample
  python main.py --mode=convert --model=base --checkpoint=base.pt --workdir=glide/base
  python main.py --mode=benchmark --config=configs/mnist_cpu.py --batch=32

Override any config field as --config.train.batch_size=64. The flags, the mode table and the error path
are glide_jax/cli.py's; each mode is glide_jax/modes/<mode>.py.
"""

from glide_jax.runtime import stop_on_sigterm_before_work

stop_on_sigterm_before_work()  # First: a SIGTERM while Python imports is a clean stop, not a traceback.

from glide_jax import cli  # noqa: E402  (imports no JAX: cli.launch sets the CPU devices up first)

if __name__ == "__main__":
  cli.launch()
