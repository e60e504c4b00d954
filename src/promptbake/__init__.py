"""promptbake: bake prompts into LoRA weights, so the model without the prompt behaves like the model with it."""
__version__ = "0.1.0"

# Eager on purpose: `bake` is also a submodule's name, and a lazy attribute would be rebound to the module the first
# time something imports promptbake.bake.
from .bake import BakeResult, bake  # noqa: E402
from .baked import BakedModel, load_baked  # noqa: E402
from .config import BakeConfig, EvalConfig, ModelConfig, SampleConfig, TrainConfig, load_config  # noqa: E402

__all__ = ["bake", "BakeResult", "load_baked", "BakedModel", "BakeConfig", "ModelConfig", "SampleConfig",
           "TrainConfig", "EvalConfig", "load_config"]
