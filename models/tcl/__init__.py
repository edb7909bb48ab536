"""TCL (Cha et al., CVPR 2023): text-grounded masks on a frozen CLIP (see model.py)."""
from .model import TCL, compute_padsize, masked_pool
from .modules import GDecoder

__all__ = ['TCL', 'GDecoder', 'compute_padsize', 'masked_pool']
