"""The GPT model (the tokenizers are data preparation: train/tokenizer.py)."""

from model.gpt import GPT, GPTConfig, build_model

__all__ = ["GPT", "GPTConfig", "build_model"]
