"""OpenAI's released GLIDE base model (64 px, 385M parameters), for a workdir made by the converter:

  python main.py --mode=convert --model=base --checkpoint=base.pt --workdir=glide/base
  python main.py --config=configs/glide_base.py --workdir=glide/base --mode=sample \\
      --config.sample.prompts="an oil painting of a corgi"

`configs/glide_base.py:inpaint` is the released inpainting model (base-inpaint), for --mode=edit.
"""

from glide_jax.released.options import glide_config


def get_config(variant: str = ""):
  if variant not in ("", "inpaint"):
    raise ValueError(f"configs/glide_base.py:{variant}: the variants are '' (base) and 'inpaint'.")
  return glide_config("base-inpaint" if variant else "base")
