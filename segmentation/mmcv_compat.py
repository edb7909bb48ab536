"""Pure-torch stand-ins for the two ``mmcv.ops`` functions mmsegmentation imports at module level.

``mmcv-lite`` ships the ``mmcv.ops`` package without its compiled extension, so ``import mmcv.ops``
fails and with it ``import mmseg.models``. :func:`install` registers a small ``mmcv.ops`` module that
provides ``point_sample`` and ``sigmoid_focal_loss``; with a full mmcv it leaves everything untouched.
"""
import importlib
import sys
import types
import warnings

import torch.nn.functional as F

__all__ = ['install', 'point_sample', 'sigmoid_focal_loss']


def point_sample(input, points, align_corners=False, **kwargs):
    """Sample ``input`` at normalised point coordinates.

    input: [N, C, H, W]; points: [N, P, 2] or [N, Hg, Wg, 2] with (x, y) in [0, 1]
    -> [N, C, P] or [N, C, Hg, Wg]
    """
    squeeze = points.dim() == 3
    grid = points.unsqueeze(2) if squeeze else points
    out = F.grid_sample(input, grid * 2.0 - 1.0, align_corners=align_corners, **kwargs)
    return out.squeeze(3) if squeeze else out


def sigmoid_focal_loss(input, target, gamma=2.0, alpha=0.25, weight=None, reduction='mean'):
    """Sigmoid focal loss with integer targets, same contract as mmcv's compiled op.

    input: [N, C] logits; target: [N] long class index (C means "no positive class");
    weight: optional [C], applied per sample by its target class -> scalar, or [N, C] if reduction='none'
    """
    if reduction not in ('none', 'mean', 'sum'):
        raise ValueError(f"sigmoid_focal_loss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    num_classes = input.size(1)
    positive = F.one_hot(target.clamp(max=num_classes), num_classes + 1)[:, :num_classes].to(input.dtype)
    prob = input.sigmoid()
    log_p = F.logsigmoid(input)
    log_not_p = F.logsigmoid(-input)
    loss = -(positive * alpha * (1 - prob).pow(gamma) * log_p
             + (1 - positive) * (1 - alpha) * prob.pow(gamma) * log_not_p)
    if weight is not None:
        loss = loss * weight[target.clamp(max=num_classes - 1)].unsqueeze(1)
    if reduction == 'mean':
        return loss.sum() / input.size(0)
    if reduction == 'sum':
        return loss.sum()
    return loss


def _missing_op(name):
    if name.startswith('__'):
        raise AttributeError(name)
    raise ModuleNotFoundError(f'mmcv.ops.{name} needs the compiled ops of full mmcv (mmcv-lite is installed)')


def _real_ops_available():
    try:
        importlib.import_module('mmcv.ops')
    except ImportError:
        return False
    return True


def install():
    """Provide ``mmcv.ops`` when the installed mmcv has no compiled ops; return True if the shim is active."""
    current = sys.modules.get('mmcv.ops')
    if current is not None:
        return getattr(current, '__pgseg_shim__', False)
    if _real_ops_available():
        return False
    warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
    import mmcv
    ops = types.ModuleType('mmcv.ops')
    ops.__doc__ = 'Pure-torch subset of mmcv.ops installed by segmentation.mmcv_compat.'
    ops.__pgseg_shim__ = True
    ops.point_sample = point_sample
    ops.sigmoid_focal_loss = sigmoid_focal_loss
    ops.__getattr__ = _missing_op
    sys.modules['mmcv.ops'] = ops
    mmcv.ops = ops
    return True
