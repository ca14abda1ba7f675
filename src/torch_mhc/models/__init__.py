"""Models to try mHC in: a GPT-style LM and a deep plain stack, each with one switch."""
from .deep_stack import DeepStack, DeepStackConfig
from .gpt import GPT, GPT_PRESETS, GPTConfig, gpt_config
from .regional import compile_blocks, force_eager

__all__ = ["GPT", "GPTConfig", "GPT_PRESETS", "gpt_config", "DeepStack", "DeepStackConfig",
           "compile_blocks", "force_eager"]
