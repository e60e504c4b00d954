"""promptbake: bake prompts into LoRA weights, so the model without the prompt behaves like the model with it."""
import importlib

__version__ = "0.1.0"

# Imported on first use (PEP 562), so `promptbake report` and other torch-free paths start instantly.
_EXPORTS = {"bake": "bake", "BakeResult": "bake", "load_baked": "baked", "BakedModel": "baked",
            "BakeConfig": "config", "ModelConfig": "config", "SampleConfig": "config", "TrainConfig": "config",
            "EvalConfig": "config", "load_config": "config"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'promptbake' has no attribute {name!r}")
