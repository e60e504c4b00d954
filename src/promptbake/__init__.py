"""promptbake: bake prompts into LoRA weights, so the model without the prompt behaves like the model with it."""
__version__ = "0.1.0"

from .bake import BakeResult, bake  # noqa: E402
from .baked import BakedModel, load_baked  # noqa: E402
from .config import BakeConfig, ModelConfig, SampleConfig, TrainConfig, load_config  # noqa: E402

__all__ = ["bake", "BakeResult", "load_baked", "BakedModel", "BakeConfig", "ModelConfig", "SampleConfig",
           "TrainConfig", "load_config"]
