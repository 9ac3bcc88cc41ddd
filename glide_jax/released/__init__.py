"""OpenAI's released GLIDE models (glide-text2im): their options, their state dicts' keys and files."""
