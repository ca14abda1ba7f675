"""Finding Hugging Face transformers and checking its version, with errors that say what to do."""
from __future__ import annotations

import re
from typing import Optional, Tuple

__all__ = ["SUPPORTED_MODEL_TYPES", "MIN_TRANSFORMERS", "MIN_TRANSFORMERS_DEEPSEEK_V4", "TransformersUnavailableError",
           "UPCYCLED_MODEL_TYPE", "transformers_version", "require_transformers"]

#: Oldest transformers the upcycling path supports (the 5.x decoder-layer API).
MIN_TRANSFORMERS = "5.0.0"
#: Oldest transformers whose DeepSeek-V4 computes the released checkpoints' mHC convention.
#: 5.8.0 shipped a pre-release form (sigmoid comb, comb not transposed, post without the 2x).
MIN_TRANSFORMERS_DEEPSEEK_V4 = "5.8.1"

#: ``model_type`` in the ``config.json`` of a saved upcycled model (the family's own type is
#: in ``mhc_upcycle["base_model_type"]``).
UPCYCLED_MODEL_TYPE = "mhc_upcycled"

#: ``config.model_type`` values :func:`~torch_mhc.integrations.transformers.upcycle` accepts:
#: their decoder layer is the pre-norm Llama layout (``h = x + self_attn(input_layernorm(x))``,
#: ``h + mlp(post_attention_layernorm(h))``) and their upcycled logits were checked equal to
#: the original's (transformers 5.23; the first four in tests/integrations).
SUPPORTED_MODEL_TYPES = (
    "llama", "mistral", "qwen2", "qwen3",
    "mixtral", "ministral", "ministral3", "qwen2_moe", "qwen3_moe", "gemma", "olmo", "olmoe",
    "starcoder2", "deepseek_v3", "ernie4_5", "ernie4_5_moe", "glm", "glm4_moe", "helium",
    "smollm3", "arcee", "seed_oss", "hunyuan_v1_dense",
)


class TransformersUnavailableError(ImportError):
    """transformers is not installed, or is older than the feature needs."""


def _parse(version: str) -> Tuple[int, int, int]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        return (0, 0, 0)
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def transformers_version() -> Optional[str]:
    """The installed transformers version, or ``None`` when it cannot be imported."""
    try:
        import transformers
    except ImportError:
        return None
    return getattr(transformers, "__version__", "0.0.0")


def require_transformers(feature: str, minimum: str = MIN_TRANSFORMERS) -> str:
    """Return the installed version, or raise :class:`TransformersUnavailableError` naming
    ``feature``, the version it needs and how to install it."""
    found = transformers_version()
    install = ("install the extra: pip install 'torch-mhc[hf]' "
               f"(or: pip install -U 'transformers>={minimum}')")
    if found is None:
        raise TransformersUnavailableError(
            f"{feature} needs Hugging Face transformers >= {minimum}, which is not installed; "
            f"{install}")
    if _parse(found) < _parse(minimum):
        raise TransformersUnavailableError(
            f"{feature} needs Hugging Face transformers >= {minimum}, found {found}; {install}")
    return found
