"""mnist_cpu's model and schedule on Fashion-MNIST (28x28 grey, 10 clothing classes), for a 2-core CPU."""

from configs import mnist_cpu


def get_config():
  config = mnist_cpu.get_config()
  config.data.name = "fashion_mnist"  # Prepared on first use like MNIST (the same idx files).
  # "{name}" is the class's TFDS name with spaces, e.g. "T-shirt/top", "Ankle boot" (at most 11 bytes,
  # within mnist_cpu's 16-byte text context).
  config.data.prompt_templates = ("{name}", "{label}")
  return config
