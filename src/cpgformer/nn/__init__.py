"""Pure-torch CpG Transformer: config, model, fast and reference attention."""

from cpgformer.nn.config import MODES, ModelConfig
from cpgformer.nn.model import CpGTransformer

__all__ = ["MODES", "CpGTransformer", "ModelConfig"]
