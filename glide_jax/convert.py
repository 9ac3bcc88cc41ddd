"""`python -m glide_jax.convert --model=base --checkpoint=base.pt --workdir=glide/base` is
`python main.py --mode=convert ...` (glide_jax/modes/convert.py); kept for the commands already in use."""

if __name__ == "__main__":
  from glide_jax import cli

  cli.launch("convert")
