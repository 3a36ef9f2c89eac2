"""CASWiT model: encoders, fusion, decoders (UPerNet, SegFormer), loss, SimMIM and named configs.

May import: runtime, safeio, core.
"""

from caswit_geo.model.caswit import CASWiT, CaswitBackbone, CaswitConfig, parse_fusion_stages
from caswit_geo.model.configs import MODEL_CONFIGS, get_config
from caswit_geo.model.fusion import FusionBlock
from caswit_geo.model.loss import CaswitLoss

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
