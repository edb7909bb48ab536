"""SegCLIP (Luo et al., ICML 2023): learnable centers on CLIP, with the reconstruction and superpixel losses."""
from .model import SegCLIP

__all__ = ['SegCLIP']
