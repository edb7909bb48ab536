"""Training-free CLIP methods (MaskCLIP, SCLIP, ClearCLIP, NACLIP): a frozen OpenAI CLIP with its last image block
changed; the full-image rule each paper evaluates with is `segmentation.evaluation.training_free`."""
from .last_block import gaussian_neighbourhood
from .methods import NACLIP, SCLIP, ClearCLIP, MaskCLIP, TrainingFreeCLIP

TRAINING_FREE_METHODS = {'maskclip': MaskCLIP, 'sclip': SCLIP, 'clearclip': ClearCLIP, 'naclip': NACLIP}

__all__ = ['TrainingFreeCLIP', 'MaskCLIP', 'SCLIP', 'ClearCLIP', 'NACLIP', 'TRAINING_FREE_METHODS',
           'gaussian_neighbourhood']
