"""The quickstart's table of toy recipes (configs/toy/methods.yml): every method of the framework has one, each
recipe builds its method and its throughput probe runs on the recipe's real training batch."""
import pytest
import torch
from omegaconf import OmegaConf

from conftest import METHOD_CONFIGS
from models import build_model
from test_methods import method_classes
from tools.make_toy_data import make_toy_world
from tools.quickstart import QuickstartError, measure_throughput, read_methods, untrained_model
from utils.config import load_config

METHODS = read_methods()


def test_every_method_of_the_framework_has_a_toy_recipe():
    assert set(METHODS) == set(METHOD_CONFIGS), 'configs/toy/methods.yml and tests/configs/*.yml name the methods'
    for name, entry in METHODS.items():
        recipe_type = load_config(entry['recipe']).model.type
        assert recipe_type == load_config(METHOD_CONFIGS[name]).model.type, name


def test_the_recipes_cover_every_method_class():
    built = set()
    for name, entry in METHODS.items():
        cfg = load_config(entry['recipe'])
        if entry.get('clip'):  # the CLIP a training-free method or TCL starts from: its recipe's architecture
            cfg.model.clip_model = load_config(METHODS[entry['clip']]['recipe']).model.clip_model
        built.add(type(build_model(cfg.model)))
    assert method_classes() <= built


def test_bad_table_entries_are_named(tmp_path):
    bad = tmp_path / 'methods.yml'
    bad.write_text('clip: {recipe: clip_words.yml, epochs: 3}\n')
    with pytest.raises(QuickstartError, match='method clip: unknown keys'):
        read_methods(str(bad))
    bad.write_text('tcl: {recipe: tcl_tiny.yml, clip: nope}\n')
    with pytest.raises(QuickstartError, match="clip: nope is not a method"):
        read_methods(str(bad))


def test_untrained_training_free_model_uses_an_untrained_clip():
    cfg = load_config(METHODS['sclip']['recipe'])
    cfg.model.clip_model = '/nonexistent/trained/clip'  # the quickstart passes the trained CLIP's checkpoint here
    model = untrained_model(cfg, METHODS, 'sclip')
    assert type(model).__name__ == 'SCLIP'
    assert model.clip.visual.conv1.weight.shape[-1] == 8  # the toy CLIP's architecture, random weights


@pytest.fixture(scope='module')
def small_world(tmp_path_factory):
    world = tmp_path_factory.mktemp('world') / 'toy'
    make_toy_world(str(world), train_samples=64, samples_per_shard=64, cls_samples=8, seg_val=2, seg_tune=2)
    return world


@pytest.mark.parametrize('name', ['clip', 'groupvit', 'segclip'])
def test_throughput_probe_runs_on_the_recipes_real_batch(name, small_world):
    world = small_world
    cfg = load_config(METHODS[name]['recipe'])
    cfg = OmegaConf.merge(cfg, {'data': {'root': str(world), 'batch_size': 4}})
    torch.set_num_threads(1)
    assert measure_throughput(cfg, steps=1, warmup=0) > 0
