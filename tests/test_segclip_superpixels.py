"""Superpixel labels per patch against a direct scikit-image computation, the training view that carries them through
the data pipeline as `seg_labels`, and the superpixel KL option of GroupViT / PGSeg."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from skimage.segmentation import felzenszwalb
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from conftest import build_tiny, tiny_config, tiny_model_cfg
from datasets import build_img_transform, build_text_transform, build_train_data, superpixel_patch_labels, tokenize
from datasets.superpixels import SuperpixelCrop, crop_coordinates, crop_patch_labels
from models import build_model
from models.superpixel_kl import superpixel_kl_loss
from tools.make_toy_data import make_toy_world


def scene(height, width, seed=0):
    """[H, W, 3] uint8: a few flat rectangles of colour with mild noise (felzenszwalb finds them)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.float64)
    for _ in range(6):
        y, x = rng.integers(0, height - 20), rng.integers(0, width - 20)
        image[y:y + rng.integers(20, height // 2), x:x + rng.integers(20, width // 2)] = rng.integers(0, 255, 3)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def direct(image, coord, size=224, patch=16):
    """The published recipe written out with scikit-image and numpy: stored copy, felzenszwalb, cut, nearest
    resize (torch's float32 source index floor(dst * in / out)), mean per patch, truncation."""
    h, w = image.shape[:2]
    if h > 224 and w > 224:
        ratio = w / h
        new = (int(224 * ratio), 224) if ratio >= 1 else (224, int(224 / ratio))
        image = np.asarray(Image.fromarray(image).resize(new, Image.LANCZOS))
    labels = felzenszwalb(image, scale=224, sigma=0.9, min_size=224)
    H, W = labels.shape
    x0, y0, x1, y1 = np.asarray(coord, dtype=np.float64)
    cut = labels[int(y0 * H):int(np.ceil(y1 * H)), int(x0 * W):int(np.ceil(x1 * W))]

    def src(n_in):
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        return (torch.arange(size, dtype=torch.float32) * scale).floor().long().clamp(max=n_in - 1).numpy()
    resized = cut[src(cut.shape[0])][:, src(cut.shape[1])]
    grid = size // patch
    out = np.zeros((grid, grid), dtype=np.int64)
    for i in range(grid):
        for j in range(grid):
            out[i, j] = int(resized[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].mean())
    return out, labels


@pytest.mark.parametrize('shape', [(300, 260), (200, 150)])  # resized to the stored copy / stored as it is
def test_patch_labels_equal_a_direct_scikit_image_computation(shape):
    image = scene(*shape)
    coord = torch.tensor([0.07, 0.11, 0.83, 0.9])  # float32 corners, as the crop gives them
    ours = superpixel_patch_labels(image, coord)
    expected, labels = direct(image, coord.numpy())
    assert ours.shape == (14, 14) and ours.dtype == np.int64
    assert np.array_equal(ours, expected)
    assert len(np.unique(ours)) > 2 and len(np.unique(labels)) > 2
    whole, _ = direct(image, [0., 0., 1., 1.])
    assert np.array_equal(superpixel_patch_labels(image, [0., 0., 1., 1.]), whole)


def test_flipped_and_degenerate_crops():
    labels = np.arange(20 * 64).reshape(20, 64) // 7
    # columns 16..48 (32 wide: the nearest resize to 32 keeps them), rows 4..18
    coord = np.array([0.25, 0.2, 0.75, 0.9], dtype=np.float32)
    upright = crop_patch_labels(labels, coord, size=32, patch_size=8)
    flipped = crop_patch_labels(labels, coord[[2, 1, 0, 3]], size=32, patch_size=8)  # x0 > x1: a flipped crop
    assert np.array_equal(flipped, upright[:, ::-1]) and not np.array_equal(flipped, upright)
    # under 2 pixels wide: the whole map, as published
    assert np.array_equal(crop_patch_labels(labels, [0.5, 0.5, 0.51, 0.9], 32, 8),
                          crop_patch_labels(labels, [0., 0., 1., 1.], 32, 8))
    with pytest.raises(ValueError, match=r'\[H, W, 3\] uint8 RGB'):
        superpixel_patch_labels(np.zeros((8, 8, 3), dtype=np.float32), [0, 0, 1, 1])


def test_superpixel_crop_view_cuts_the_labels_with_its_crop():
    image = Image.fromarray(scene(260, 300, seed=1))
    view = SuperpixelCrop(224, (0.5, 1.0), mean=(0.5,) * 3, std=(0.25,) * 3, interpolation='bicubic')
    torch.manual_seed(3)
    out = view(image)
    torch.manual_seed(3)
    stored = image.resize((int(224 * 300 / 260), 224), Image.LANCZOS)
    i, j, h, w = T.RandomResizedCrop.get_params(stored, (0.5, 1.0), (3 / 4, 4 / 3))
    crop = TF.resized_crop(stored, i, j, h, w, [224, 224], T.InterpolationMode.BICUBIC)
    torch.testing.assert_close(out['image'], (TF.to_tensor(crop) - 0.5) / 0.25)
    expected = superpixel_patch_labels(np.asarray(image), crop_coordinates(i, j, h, w, 224, stored.width))
    assert out['seg_labels'].shape == (14, 14) and np.array_equal(out['seg_labels'].numpy(), expected)


def test_the_training_batches_carry_seg_labels(tmp_path):
    world = tmp_path / 'toy'
    make_toy_world(str(world), train_samples=8, samples_per_shard=8, cls_samples=8, seg_val=1, seg_tune=1)
    cfg = tiny_config('segclip')
    data = OmegaConf.merge(cfg.data, {'batch_size': 4, 'num_workers': 0, 'shuffle_buffer': 8,
                                      'dataset': {'meta': {'toy': {'type': 'img_txt_pair', 'path': str(world / 'shards'),
                                                                   'prefix': 'toy-train-*.tar', 'length': 8}},
                                                  'train': ['toy']}})
    train = build_train_data(data, build_img_transform(True, data.img_aug),
                             build_text_transform(True, data.text_aug, tokenize), rank=0, world=1, seed=0)
    batch = next(iter(train))
    assert batch['image'].shape == (4, 3, 32, 32) and batch['text'].shape == (4, 32)
    assert batch['seg_labels'].shape == (4, 4, 4) and batch['seg_labels'].dtype == torch.int64
    plain = OmegaConf.merge(data, {'img_aug': {'superpixels': {'enabled': False}}})
    assert 'seg_labels' not in next(iter(build_train_data(plain, build_img_transform(True, plain.img_aug),
                                                          build_text_transform(True, plain.text_aug, tokenize),
                                                          rank=0, world=1, seed=0)))


@pytest.mark.parametrize('name', ['groupvit', 'pgseg'])
def test_groupvit_and_pgseg_take_the_superpixel_kl_loss_as_an_option(name):
    off = build_tiny(name)
    assert off.superpixel_kl_weight == 0.0
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg(name, superpixel_kl_weight=0.5)).train()
    image = torch.randn(2, 3, 32, 32)
    text = tokenize(['a dog on grass', 'a red car'], context_length=16)
    if model.multi_label:
        text = torch.stack([text, text, text], dim=1)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    losses = model.forward_train(image, text, seg_labels=labels)
    torch.manual_seed(5)
    model.encode_text(text, as_dict=True)
    _, stages = model.img_encoder.forward_features(image, return_attn=True)
    hard = stages[0].attn_dict['hard'][:, 0].transpose(1, 2)  # [B, 16 patches, 8 groups] of the first stage
    expected = 0.5 * superpixel_kl_loss(hard, labels.flatten(1))
    torch.testing.assert_close(losses['loss_superpixel_kl'], expected)
    assert losses['loss_superpixel_kl'] > 0
    with pytest.raises(ValueError, match='seg_labels'):
        model.forward_train(image, text)
    assert 'loss_superpixel_kl' not in off.forward_train(image, text)
