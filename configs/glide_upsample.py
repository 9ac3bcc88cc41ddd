"""OpenAI's released GLIDE upsampler (64 → 256 px, 398M parameters), for a workdir made by the converter:

  python main.py --mode=convert --model=upsample --checkpoint=upsample.pt --workdir=glide/upsample
  python main.py --config=configs/glide_upsample.py --workdir=glide/upsample --mode=sample \\
      --config.sample.base_workdir=glide/base

--mode=sample runs the cascade: the base workdir's model samples 64 px images, this one enlarges them.
`configs/glide_upsample.py:inpaint` is the released upsampling inpainter (upsample-inpaint).
"""

from glide_jax.released.options import glide_config


def get_config(variant: str = ""):
  if variant not in ("", "inpaint"):
    raise ValueError(f"configs/glide_upsample.py:{variant}: the variants are '' (upsample) and 'inpaint'.")
  return glide_config("upsample-inpaint" if variant else "upsample")
