"""Every registered method through the contract of models/base.py, from its tiny config (tests/configs/)."""
import inspect

import pytest
import torch
from omegaconf import OmegaConf

import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from conftest import METHOD_CONFIGS, build_tiny, tiny_config
from models import MODELS, SegmentationMethod, training_loss
from models.groupvit.model import MultiLabelContrastive
from datasets.templates import get_templates
from segmentation.evaluation import ZeroShotSegmentor, method_options, zero_shot_logits
from utils.checkpoint import load_weights, save_checkpoint
from utils.zero_shot import class_embeddings

CLASS_NAMES = ['cat', 'dog', 'grass', 'sky', 'a red car']
TEST_CFG = dict(mode='slide', crop_size=(32, 32), stride=(16, 16), crop_batch=4, bg_thresh=0.5, top_k=3)


def method_classes():
    """Every method class of models/ a config can build: registered SegmentationMethods and GroupViT's variants
    (methods that tests define for themselves do not count)."""
    classes = {MODELS[k] for k in MODELS.keys() if inspect.isclass(MODELS[k])
               and issubclass(MODELS[k], SegmentationMethod)} | set(MultiLabelContrastive.variants.values())
    return {c for c in classes if c.__module__.startswith('models.')}


def image_size(name):
    """The tiny model's input size: its image encoder's img_size, else the training crop's."""
    cfg = tiny_config(name)
    return int(OmegaConf.select(cfg, 'model.img_encoder.img_size', default=cfg.data.img_aug.img_size))


def trains(model):
    return type(model).forward_train is not SegmentationMethod.forward_train


def training_inputs(model, name, batch=2):
    """image and text, and 'seg_labels' [B, h, w] when the config asks the data pipeline for superpixels."""
    cfg = tiny_config(name)
    size = image_size(name)
    captions = ['a dog on grass', 'a red car under the sky', 'two cats', 'a cat and a dog'][:batch]
    text = model.tokenize(captions)
    multi_label = int(cfg.data.text_aug.multi_label)
    if multi_label:
        prompts = model.tokenize([f'a photo of a {w}.' for w in CLASS_NAMES[:multi_label]])
        text = torch.cat([text[:, None], prompts[None].expand(batch, -1, -1)], dim=1)
    inputs = {'image': torch.randn(batch, 3, size, size), 'text': text}
    if OmegaConf.select(cfg, 'data.img_aug.superpixels.enabled', default=False):
        grid = size // int(cfg.data.img_aug.superpixels.patch_size)
        inputs['seg_labels'] = torch.randint(0, 3, (batch, grid, grid), generator=torch.Generator().manual_seed(0))
    return inputs


def test_every_method_has_a_tiny_config():
    built = {type(build_tiny(name)) for name in METHOD_CONFIGS}
    assert method_classes() <= built, f'methods without tests/configs/*.yml: {method_classes() - built}'


def test_encoders_and_class_embeddings(method_name):
    model = build_tiny(method_name).eval()
    size = image_size(method_name)
    with torch.no_grad():
        image_x = model.encode_image(torch.randn(2, 3, size, size))
        text_x = model.encode_text(model.tokenize(['a cat', 'a dog', 'grass']))
        classes = class_embeddings(model, CLASS_NAMES, get_templates('subset'))
        other = class_embeddings(model, list(reversed(CLASS_NAMES)), get_templates('subset'))
    assert image_x.shape[0] == 2 and text_x.shape[0] == 3 and image_x.shape[1] == text_x.shape[1]
    assert classes.shape == (len(CLASS_NAMES), text_x.shape[1])
    torch.testing.assert_close(classes.norm(dim=-1), torch.ones(len(CLASS_NAMES)))
    torch.testing.assert_close(other, classes.flip(0))
    assert not torch.allclose(classes[0], classes[1])


def test_training_step_reaches_every_trainable_parameter(method_name):
    torch.manual_seed(0)
    model = build_tiny(method_name).train()
    if not trains(model):  # a training-free method: frozen, and it says so when asked to train
        assert not any(p.requires_grad for p in model.parameters())
        with pytest.raises(NotImplementedError, match='cannot be trained'):
            model.forward_train(**training_inputs(model, method_name))
        return
    terms = model.forward_train(**training_inputs(model, method_name))
    loss = training_loss(terms)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    reached = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(reached) >= 0.9 * len(trainable), sorted(set(trainable) - set(reached))
    image_tower = [n for n in trainable if n.startswith(('img_encoder.', 'clip.visual.', 'masker.'))]
    text_tower = [n for n in trainable if n.startswith(('text_encoder.', 'clip.transformer.'))]
    frozen_text = any(n.startswith('clip_text_encoder.') for n, p in model.named_parameters() if not p.requires_grad)
    assert image_tower and (text_tower or frozen_text)  # TCL trains its masker on a frozen CLIP
    assert set(image_tower) & set(reached) and (not text_tower or set(text_tower) & set(reached))


def test_training_loss_sums_only_loss_terms():
    terms = {'loss': torch.tensor(1.0), 'loss_pg': torch.tensor(0.5), 'accuracy': torch.tensor(80.0)}
    assert float(training_loss(terms)) == 1.5


def test_checkpoint_round_trip(method_name, tmp_path):
    model = build_tiny(method_name, seed=1).eval()
    path = save_checkpoint(str(tmp_path / 'ckpt'), model.state_dict())
    fresh = build_tiny(method_name, seed=2).eval()
    load_weights(fresh, path, strict=True)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    img = torch.randn(1, 3, image_size(method_name), image_size(method_name))
    with torch.no_grad():
        assert torch.equal(model.encode_image(img), fresh.encode_image(img))


def test_segmentor_slide_and_zero_shot_logits(method_name):
    model = build_tiny(method_name).eval()
    size = image_size(method_name)
    with torch.no_grad():
        text = class_embeddings(model, CLASS_NAMES, get_templates('simple'))
        crop = torch.randn(2, 3, size, size)
        options = method_options(model, dict(top_k=3))
        with_bg = zero_shot_logits(model, crop, text, True, 0.5, **options)
        without = zero_shot_logits(model, crop, text, False, 0.5, **options)
        segmentor = ZeroShotSegmentor(model, text, True, TEST_CFG).eval()
        image = torch.randn(1, 3, size + 13, 2 * size)
        meta = dict(ori_shape=image.shape[-2:], img_shape=image.shape[-2:], pad_shape=image.shape[-2:])
        logits = segmentor.inference(image, [meta])
    assert with_bg.shape == (2, len(CLASS_NAMES) + 1, size, size)
    assert torch.equal(with_bg[:, 1:], without)
    assert logits.shape == (1, len(CLASS_NAMES) + 1, size + 13, 2 * size)
    assert torch.isfinite(logits).all()
