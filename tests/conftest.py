"""The tiny model of every method, declared once: tests/configs/<name>.yml (a full config with a tiny model).

`method_name` parametrises a test over all of them; `tiny_config(name)` / `build_tiny(name)` give one.
"""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get('PYTEST_XDIST_WORKER_COUNT'):
    # pytest -n N: each worker (and every process it starts) gets its share of the cores, not all of them
    _THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT'])))
    os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = _THREADS
    torch.set_num_threads(int(_THREADS))

METHOD_CONFIGS = {path.stem: path for path in sorted((ROOT / 'tests' / 'configs').glob('*.yml'))}


def published_state_dict(name: str) -> dict:
    """{'keys': {name: shape}, 'model_cfg', 'config'} of a published checkpoint, copied into tests/data from the
    published code (official_state_dict_<name>.json; name: groupvit_gcc_yfcc_30e or pgseg_specific)."""
    import json
    return json.loads((ROOT / 'tests' / 'data' / f'official_state_dict_{name}.json').read_text())


def tiny_config_path(name: str) -> str:
    return str(METHOD_CONFIGS[name])


def tiny_config(name: str):
    from utils.config import load_config
    return load_config(tiny_config_path(name))


def tiny_model_cfg(name: str, **overrides):
    """The `model` section of the tiny config, resolved, with `overrides` ('img_encoder.depths': [...] style keys
    or top-level keys) applied -> DictConfig for build_model."""
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(OmegaConf.to_container(tiny_config(name).model, resolve=True))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def build_tiny(name: str, seed: int = 0):
    """The method's tiny model with seeded random weights (train mode, as built)."""
    from models import build_model
    torch.manual_seed(seed)
    return build_model(tiny_config(name).model)


@pytest.fixture(params=sorted(METHOD_CONFIGS))
def method_name(request):
    return request.param
