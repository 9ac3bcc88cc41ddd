"""GLIDE's noised CLIP (glide-text2im `clip/`): image and text encoders for CLIP guidance, and the map from the
released `clip/image-enc`, `clip/text-enc` state dicts to their parameters."""

from glide_jax.clip.keymap import clip_param_shapes, convert_clip
from glide_jax.clip.model import (
    ClipConfig,
    ImageEncoder,
    TextEncoder,
    clip_guidance_grad,
    clip_loss,
    image_embeddings,
    init_clip_params,
    normalize,
    text_embeddings,
)
from glide_jax.clip.tokenizer import EOT_ID, SOT_ID, ClipTokenizer, get_clip_tokenizer

__all__ = [
    "EOT_ID", "SOT_ID", "ClipConfig", "ClipTokenizer", "ImageEncoder", "TextEncoder", "clip_guidance_grad",
    "clip_loss", "clip_param_shapes", "convert_clip", "get_clip_tokenizer", "image_embeddings", "init_clip_params",
    "normalize", "text_embeddings",
]
