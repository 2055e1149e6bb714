"""The tiny model builder moved to persona_icm.tiny_model (scripts/gpu_check.sh uses it too)."""

from persona_icm.tiny_model import build_model, build_tokenizer, make_claims, write_tiny_model  # noqa: F401
