"""MNIST scenes on a 2-core CPU: one or two digits in the cells of a 2x2 grid at 32x32, captioned by where
they are ("a 3 to the left of a 7", "two 4s", "a 5 in the top right corner"; glide_jax/scenes.py), with GPT-2
tokens. The model and recipe are mnist_cpu's, for 12,000 steps (86 minutes on a 2-core Xeon): they draw the
right digits but place 44% of held-out captions fully right (docs/results.md, "MNIST scenes").

  python main.py --config=configs/mnist_scenes_cpu.py --workdir=runs/mnist_scenes_cpu
  python main.py --config=configs/mnist_scenes_cpu.py --workdir=runs/mnist_scenes_cpu --mode=sample \\
      --config.sample.prompts="a 3 to the left of a 7,a 7 to the left of a 3"

The held_out split's captions never appear in training: sample them to see whether word order was learned.
"""

from configs import mnist_cpu


def get_config():
  config = mnist_cpu.get_config()
  config.data.source = "mnist_scenes"
  config.data.test_split = "held_out"
  config.model.tokenizer = "gpt2"
  config.model.text_ctx = 16  # The longest caption is 8 GPT-2 tokens.
  config.train.num_steps = 12_000  # What fits 90 minutes on a 2-core AVX-512 Xeon (2.3-2.7 steps/s).
  config.sample.prompts = "a 3 to the left of a 7,a 7 to the left of a 3,a 1 above a 2,two 4s"
  config.edit.prompts = "a 3 to the left of a 7"
  return config
