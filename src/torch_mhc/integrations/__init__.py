"""Integrations with other libraries. Each lives in a subpackage and imports its library lazily.

* :mod:`torch_mhc.integrations.transformers` -- Hugging Face transformers (extra ``hf``):
  run DeepSeek-V4's mHC sites on torch-mhc (``patch_deepseek_v4``) and turn a pretrained
  decoder-only model into an mHC model (``upcycle``, ``save_upcycled``, ``load_upcycled``).
"""
