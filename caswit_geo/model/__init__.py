"""CASWiT model: encoders, fusion, decoder, loss, SimMIM and named configs."""

from .caswit import CASWiT, CaswitBackbone, CaswitConfig, parse_fusion_stages
from .configs import MODEL_CONFIGS, get_config
from .fusion import FusionBlock
from .loss import CaswitLoss

__all__ = [
    "CASWiT",
    "CaswitBackbone",
    "CaswitConfig",
    "CaswitLoss",
    "FusionBlock",
    "MODEL_CONFIGS",
    "get_config",
    "parse_fusion_stages",
]
