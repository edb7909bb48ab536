"""Shared by the demo, app and browser tests: a tiny model config, a checkpoint whose groups are sharp even with
random weights, and toy-world images."""
import os

import torch
from omegaconf import OmegaConf

from conftest import tiny_config_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# random assignment logits are nearly flat, so every pixel falls into one final group; scaling the assignment
# queries and keys makes the arg-max follow the image content, so outputs have several groups and labels
ASSIGN_SHARPNESS = 30.0


def tiny_config(folder):
    """-> path of a full config: the tiny GroupViT of tests/configs at the toy world's 64 px."""
    path = os.path.join(folder, 'tiny.yml')
    body = {'_base_': tiny_config_path('groupvit'), 'model': {'img_encoder': {'img_size': 64}}}
    OmegaConf.save(OmegaConf.create(body), path)
    return path


def sharp_checkpoint(folder, seed=0):
    """-> (config path, checkpoint path) of a seeded random tiny model with sharpened group assignment."""
    from models import build_model
    from utils.checkpoint import save_checkpoint
    from utils.config import load_config
    cfg_path = tiny_config(str(folder))
    torch.manual_seed(seed)
    model = build_model(load_config(cfg_path).model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if '.assign.q_proj' in name or '.assign.k_proj' in name:
                param.mul_(ASSIGN_SHARPNESS)
    ckpt = save_checkpoint(os.path.join(str(folder), 'sharp.pth'), model.state_dict())
    return cfg_path, ckpt


def toy_images(folder, count=3):
    """-> paths of `count` toy-world segmentation images (64 px) written under `folder`."""
    from tools.make_toy_data import make_toy_world
    make_toy_world(str(folder), train_samples=1, samples_per_shard=1, cls_samples=1, seg_val=count, seg_tune=1)
    voc = os.path.join(str(folder), 'voc', 'JPEGImages')
    return [os.path.join(voc, f'val_{i:06d}.jpg') for i in range(count)]


def two_scene_image(paths, upscale=2):
    """Two 64 px toy images side by side, upscaled with nearest neighbours: [64u, 128u, 3] uint8. The toy preset
    resizes it back exactly (short side 64), so the model sees the two scenes unchanged."""
    import numpy as np
    from PIL import Image
    scenes = [np.asarray(Image.open(p).convert('RGB')) for p in paths[:2]]
    return np.concatenate(scenes, axis=1).repeat(upscale, 0).repeat(upscale, 1)
