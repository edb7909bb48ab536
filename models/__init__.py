"""Every method of the framework: one package each, registered in MODELS (see models/base.py for the contract)."""
from .base import GroupView, SegmentationMethod, training_loss
from .builder import MODELS, build_model
from .clip.contrastive import ContrastiveCLIP
from .groupvit import GroupViT, MultiLabelContrastive
from .ovsegmentor import OVSegmentor
from .pgseg import PGSeg, PGSegContrastive
from .segclip import SegCLIP  # noqa: F401  (registers SegCLIP)
from .tcl import TCL
from .text_transformer import TextTransformer
from . import training_free  # noqa: F401  (registers MaskCLIP, SCLIP, ClearCLIP, NACLIP)

__all__ = ['MODELS', 'build_model', 'SegmentationMethod', 'GroupView', 'training_loss', 'MultiLabelContrastive',
           'GroupViT', 'PGSeg', 'PGSegContrastive', 'TextTransformer', 'ContrastiveCLIP', 'TCL']
