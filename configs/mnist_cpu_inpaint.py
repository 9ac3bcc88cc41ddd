"""mnist_cpu as an inpainting model (glide-text2im's InpaintText2ImUNet), fine-tuned from a mnist_cpu run:

  python main.py --config=configs/mnist_cpu_inpaint.py --workdir=runs/inpaint \\
      --config.train.init_from=runs/mnist_cpu

Without init_from it trains from scratch. Each training example hides a random rectangle or half of the
image; the model sees the rest (and the mask) and learns to fill it in to match the prompt. Half of the
examples are edit composites (glide_jax/editing/composites.py): their kept part began another digit than
the prompted one, as in an edit, so the model learns to follow the prompt where the pixels disagree.
"""

from configs import mnist_cpu


def get_config():
  config = mnist_cpu.get_config()
  config.model.inpaint = True
  # Fine-tuning: a lower rate than mnist_cpu's 1e-3 keeps what the base model learned; the new input
  # channels start at zero and learn from there.
  config.train.learning_rate = 3e-4
  # The fine-tune measured in the README: plain L_simple weights and a constant rate, as before mnist_cpu
  # took up min-SNR-γ and the cosine decay.
  config.train.min_snr_gamma = 0.0
  config.train.lr_schedule = "constant"
  config.train.warmup_steps = 50
  config.train.edit_composites = 0.5
  # 4000 steps: edit accuracy rose from 1000 to 4000 steps (docs/results.md, "Editing: an inpainting model
  # taught on edit composites").
  config.train.num_steps = 4000
  config.train.sample_every = 0
  return config
