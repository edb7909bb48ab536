"""PGSeg (Zhang et al., NeurIPS 2023): GroupViT with prototype guidance of its groups."""
from .encoder import PGSeg
from .model import PGSegContrastive

__all__ = ['PGSeg', 'PGSegContrastive']
