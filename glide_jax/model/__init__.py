"""The network: GLIDE's text-conditional UNet, its text transformer, building blocks and tokenizers."""

from glide_jax.model.model_config import DTYPES, ModelConfig
from glide_jax.model.text2im import Text2ImUNet, count_params, init_params
from glide_jax.model.tokenizer import Tokenizer, get_tokenizer

__all__ = ["DTYPES", "ModelConfig", "Text2ImUNet", "Tokenizer", "count_params", "get_tokenizer", "init_params"]
