"""The mmcv.ops shim, mmseg imports, the IoU metric, PAMR and the sliding-window helpers."""
import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import segmentation  # noqa: F401
from segmentation.mmcv_compat import install, point_sample, sigmoid_focal_loss
from models.groupvit.segmentation import feature_grid
from models.pamr import PAMR, refine_with_pamr
from segmentation.evaluation import SegIoUMetric, slide_windows


def test_shim_is_active_exactly_without_compiled_ops():
    compiled = importlib.util.find_spec('mmcv._ext') is not None
    assert install() is (not compiled)
    from mmseg.models import EncoderDecoder  # noqa: F401  (needs mmcv.ops at import time)
    from mmseg.evaluation import IoUMetric  # noqa: F401
    if compiled:
        return
    from mmcv.ops import point_sample as ops_point_sample
    assert ops_point_sample is point_sample
    with pytest.raises(ModuleNotFoundError, match='full mmcv'):
        from mmcv.ops import RoIAlign  # noqa: F401
    assert not hasattr(sys.modules['mmcv.ops'], '__path__')


def test_point_sample_matches_pixel_values():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    # pixel centres in [0, 1] coordinates land exactly on the stored values (align_corners=False)
    rows, cols = torch.tensor([0, 2, 4]), torch.tensor([6, 3, 0])
    points = torch.stack([(cols + 0.5) / 7, (rows + 0.5) / 5], dim=-1).expand(2, 3, 2)
    out = point_sample(x, points)
    assert out.shape == (2, 3, 3)
    torch.testing.assert_close(out, x[:, :, rows, cols])
    grid = points.view(2, 3, 1, 2)
    assert point_sample(x, grid).shape == (2, 3, 3, 1)


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_sigmoid_focal_loss_matches_formula(reduction):
    from mmseg.models.losses.focal_loss import py_sigmoid_focal_loss
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 1])  # 4 = no positive class
    onehot = F.one_hot(target, 5)[:, :4].float()
    expected = py_sigmoid_focal_loss(logits, onehot, gamma=2.0, alpha=0.25, reduction='none')
    ours = sigmoid_focal_loss(logits, target, 2.0, 0.25, None, reduction)
    reduce = {'none': lambda t: t, 'mean': lambda t: t.sum() / 6, 'sum': torch.sum}[reduction]
    torch.testing.assert_close(ours, reduce(expected))
    # by hand for one positive entry
    p = torch.sigmoid(logits[1, 1])
    hand = -0.25 * (1 - p)**2 * torch.log(p)
    torch.testing.assert_close(sigmoid_focal_loss(logits, target, reduction='none')[1, 1], hand)


def _areas(pred, gt, num_classes):
    metric = SegIoUMetric(ignore_index=255)
    metric.dataset_meta = dict(classes=tuple(str(i) for i in range(num_classes)))
    for p, g in zip(pred, gt):
        metric.process({}, [dict(pred_sem_seg=dict(data=torch.tensor(p)), gt_sem_seg=dict(data=torch.tensor(g)))])
    return metric.compute_metrics(metric.results)


def test_iou_matches_hand_computation():
    gt = [np.array([[0, 0, 1, 1], [0, 2, 2, 255]]), np.array([[1, 1, 1, 0]])]
    pred = [np.array([[0, 1, 1, 1], [0, 2, 0, 2]]), np.array([[1, 0, 3, 0]])]
    res = _areas(pred, gt, 4)
    # class 0: gt {(0,0),(0,1),(1,0),(b:0,3)} pred {(0,0),(1,0),(1,2),(b:0,1),(b:0,3)} (255 pixel ignored)
    iou0, acc0 = 3 / 6, 3 / 4
    iou1, acc1 = 3 / 6, 3 / 5      # gt 5 pixels, pred 4, overlap 3
    iou2, acc2 = 1 / 2, 1 / 2      # gt 2, pred 1 (the ignored pixel does not count), overlap 1
    iou3 = 0.0                     # predicted once, never in the ground truth: IoU 0, Acc undefined
    assert res['IoU'] == pytest.approx([100 * iou0, 100 * iou1, 100 * iou2, 100 * iou3])
    assert res['Acc'][:3] == pytest.approx([100 * acc0, 100 * acc1, 100 * acc2]) and math.isnan(res['Acc'][3])
    assert res['mIoU'] == pytest.approx(100 * (iou0 + iou1 + iou2 + iou3) / 4)
    assert res['mAcc'] == pytest.approx(100 * (acc0 + acc1 + acc2) / 3)
    assert res['aAcc'] == pytest.approx(100 * 7 / 11)


def test_class_absent_everywhere_is_left_out_of_the_mean():
    res = _areas([np.array([[0, 1]])], [np.array([[0, 1]])], 3)
    assert res['mIoU'] == pytest.approx(100.0) and math.isnan(res['IoU'][2])


def test_feature_grid_follows_published_rule():
    assert feature_grid(28 * 28, 448, 448) == (28, 28)
    assert feature_grid(21 * 28, 341, 448) == (21, 28)  # a short crop of a very wide image
    assert feature_grid(28 * 21, 448, 341) == (28, 21)
    with pytest.raises(ValueError, match='grid'):
        feature_grid(10, 448, 448)


def test_slide_windows_cover_image_like_mmseg():
    windows = slide_windows(500, 700, (448, 448), (224, 224))
    assert windows[0] == (0, 448, 0, 448) and windows[-1] == (52, 500, 252, 700)
    assert len(windows) == 2 * 3
    count = np.zeros((500, 700))
    for y1, y2, x1, x2 in windows:
        assert (y2 - y1, x2 - x1) == (448, 448)
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1
    assert slide_windows(300, 200, (448, 448), (224, 224)) == [(0, 300, 0, 200)]


def _two_region_image(size=32):
    """Left half dark, right half bright: [1, 3, H, W], and the true right-half mask [H, W]."""
    torch.manual_seed(0)
    img = torch.full((1, 3, size, size), -1.0)
    img[..., size // 2:] = 1.0
    img += 0.05 * torch.randn_like(img)
    truth = torch.zeros(size, size)
    truth[:, size // 2:] = 1
    return img, truth


def test_pamr_sharpens_a_blurred_mask():
    img, truth = _two_region_image()
    kernel = torch.ones(1, 1, 9, 9) / 81
    blurred = F.conv2d(F.pad(truth[None, None], [4] * 4, mode='replicate'), kernel)
    mask = torch.cat([1 - blurred, blurred], dim=1)
    refined = PAMR(num_iter=10, dilations=(1, 2, 4))(img, mask)
    err_before = (mask[0, 1] - truth).abs().mean()
    err_after = (refined[0, 1] - truth).abs().mean()
    assert err_after < 0.5 * err_before
    assert ((refined[0, 1] > 0.5) == truth.bool()).all()
    torch.testing.assert_close(refined.sum(1), torch.ones(1, 32, 32))  # a convex combination per pixel


def test_pamr_keeps_constant_masks_and_handles_large_dilations():
    img, _ = _two_region_image(16)
    mask = torch.full((1, 3, 16, 16), 0.25)
    out = PAMR(10, (1, 2, 4, 8, 12, 24))(img, mask)
    torch.testing.assert_close(out, mask)
    scores = torch.rand(2, 4, 64, 64)
    assert refine_with_pamr(PAMR(), torch.randn(2, 3, 64, 64), scores, 4).shape == (2, 4, 64, 64)


def test_overlay_colours_classes_and_keeps_background_and_ignore(tmp_path):
    from PIL import Image
    from segmentation.evaluation.vis import colorize_over, save_overlay
    image = np.full((4, 6, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2, 255, 1, 0]] * 4)
    palette = [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    out = colorize_over(image, labels, palette, skip=(0, ))
    assert (out[:, 0] == 100).all() and (out[:, 3] == 100).all()
    assert out[0, 1].tolist() == [150, 50, 50] and out[0, 2].tolist() == [50, 150, 50]
    Image.fromarray(image).save(tmp_path / 'img.png')
    path = save_overlay(str(tmp_path / 'vis/x.png'), str(tmp_path / 'img.png'), labels, labels, palette, True)
    assert Image.open(path).size == (3 * 384, 256)  # three panels, enlarged to a short side of 256
