"""Config loading: `_base_` merging, interpolation, strict key check, --opts and command-line overrides."""
import os.path as osp
import re
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

import utils.config as config_module
from conftest import published_state_dict
from utils.config import ConfigError, get_config, load_config, parse_opts

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = osp.join(ROOT, 'configs')
PUBLISHED = ['default', 'group_vit_gcc_yfcc_30e', 'group_vit_gcc_redcap_30e', 'default_pgseg', 'pgseg_specific']


def write(path, text):
    path.write_text(text)
    return str(path)


def args_for(cfg, **kw):
    fields = dict(cfg=cfg, opts=None, batch_size=None, output=None, tag=None, resume=None, amp_opt_level=None,
                  wandb=False, keep=None, eval=False)
    fields.update(kw)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize('name', PUBLISHED)
def test_published_configs_load_and_resolve(name):
    cfg = load_config(osp.join(CONFIGS, f'{name}.yml'))
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert '_base_' not in plain
    assert plain['data']['seed'] == plain['train']['seed']


@pytest.mark.parametrize('cfg_name,ref_name,multi_label', [
    ('group_vit_gcc_yfcc_30e', 'official_state_dict_groupvit_gcc_yfcc_30e', 3),
    ('group_vit_gcc_redcap_30e', 'official_state_dict_groupvit_gcc_yfcc_30e', 0),
    ('pgseg_specific', 'official_state_dict_pgseg_specific', 0),
])
def test_model_sections_match_reference(cfg_name, ref_name, multi_label):
    expected = published_state_dict(ref_name.replace('official_state_dict_', ''))['model_cfg']
    expected['multi_label'] = multi_label
    model = OmegaConf.to_container(load_config(osp.join(CONFIGS, f'{cfg_name}.yml')).model, resolve=True)
    assert model == expected


def test_groupvit_recipe_values():
    cfg = load_config(osp.join(CONFIGS, 'group_vit_gcc_yfcc_30e.yml'))
    assert cfg.data.batch_size * 16 == 4096 and cfg.train.lr_scaling_batch == 4096
    assert (cfg.train.base_lr, cfg.train.epochs, cfg.train.warmup_epochs) == (1.6e-3, 30, 2)
    assert (cfg.train.weight_decay, cfg.train.clip_grad) == (0.05, 5.0)
    assert (cfg.train.lr_scheduler.name, cfg.train.optimizer.name) == ('cosine', 'adamw')
    assert list(cfg.data.dataset.train) == ['gcc3m', 'gcc12m', 'yfcc14m']
    redcap = load_config(osp.join(CONFIGS, 'group_vit_gcc_redcap_30e.yml'))
    assert list(redcap.data.dataset.train) == ['gcc3m', 'gcc12m', 'redcap12m'] and redcap.model.multi_label == 0


def test_pgseg_recipe_values():
    cfg = load_config(osp.join(CONFIGS, 'pgseg_specific.yml'))
    assert cfg.checkpoint.resume.endswith('group_vit_gcc_redcap_30e-3dd09a76.pth')
    assert cfg.checkpoint.resume_weights_only is True
    assert (cfg.train.base_lr, cfg.train.warmup_epochs, cfg.train.min_lr, cfg.train.warmup_lr) == (1e-4, 10, 1e-5, 1e-6)
    assert cfg.train.lr_scaling_batch is None
    assert cfg.data.text_aug.multi_label == 0 and cfg.data.img_aug.deit_aug is False
    assert cfg.data.batch_size == 1024 and cfg.data.dataset.meta.gcc3m.length == 2817350
    assert list(cfg.evaluate.task) == ['seg', 'cls']


def test_base_list_recursive_override_and_interpolation(tmp_path):
    write(tmp_path / 'a.yml', 'train:\n  seed: 1\n  epochs: 5\nprint_freq: 1\n')
    write(tmp_path / 'b.yml', f'_base_: {osp.join(CONFIGS, "default.yml")}\ntrain:\n  epochs: 7\n')
    (tmp_path / 'sub').mkdir()
    child = write(tmp_path / 'sub' / 'c.yml', '_base_: [../b.yml, ../a.yml]\nprint_freq: 3\n')
    cfg = load_config(child)
    assert cfg.train.epochs == 5 and cfg.print_freq == 3 and cfg.train.base_lr == 1.6e-3
    assert cfg.data.seed == 1


def test_misspelt_key_names_key_file_and_suggestion(tmp_path):
    base = osp.join(CONFIGS, 'group_vit_gcc_yfcc_30e.yml')
    path = write(tmp_path / 'foo.yml', f'_base_: {base}\nmodel:\n  img_encoder:\n    embed_dims: 3\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"unknown key 'model.img_encoder.embed_dims' in {path} (did you mean 'embed_dim'?)"
    path = write(tmp_path / 'bar.yml', f'_base_: {base}\ntrain:\n  base_lrr: 1\n')
    with pytest.raises(ConfigError, match=r"'train\.base_lrr' in .*bar\.yml \(did you mean 'base_lr'\?\)"):
        load_config(path)


def test_unknown_model_type_blames_the_file_that_sets_it(tmp_path):
    base = osp.join(CONFIGS, 'group_vit_gcc_yfcc_30e.yml')
    path = write(tmp_path / 'typ.yml', f'_base_: {base}\nmodel:\n  img_encoder:\n    type: GroupVit\n')
    with pytest.raises(ConfigError, match=r"unknown model type 'GroupVit' in .*typ\.yml \(did you mean 'GroupViT'\?\)"):
        load_config(path)


def test_dataset_meta_accepts_new_names_but_checks_their_keys(tmp_path):
    base = osp.join(CONFIGS, 'default.yml')
    good = write(tmp_path / 'good.yml', f'_base_: {base}\ndata:\n  dataset:\n    meta:\n      mine: {{path: x}}\n')
    assert load_config(good).data.dataset.meta.mine.path == 'x'
    bad = write(tmp_path / 'bad.yml', f'_base_: {base}\ndata:\n  dataset:\n    meta:\n      mine: {{pth: x}}\n')
    with pytest.raises(ConfigError, match=r"'data\.dataset\.meta\.mine\.pth'.*did you mean 'path'"):
        load_config(bad)


def test_section_given_a_scalar_is_refused(tmp_path):
    path = write(tmp_path / 's.yml', f'_base_: {osp.join(CONFIGS, "default.yml")}\ntrain: 3\n')
    with pytest.raises(ConfigError, match="'train' in .*s.yml must be a mapping"):
        load_config(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match='config file not found: .*missing.yml'):
        load_config(str(tmp_path / 'missing.yml'))
    bad = write(tmp_path / 'bad.yml', 'a: [1, 2\n')
    with pytest.raises(ConfigError, match='cannot parse .*bad.yml'):
        load_config(bad)
    write(tmp_path / 'x.yml', '_base_: y.yml\n')
    write(tmp_path / 'y.yml', '_base_: x.yml\n')
    with pytest.raises(ConfigError, match='circular _base_'):
        load_config(str(tmp_path / 'x.yml'))


def test_parse_opts_both_styles():
    opts = parse_opts(['train.base_lr=1e-3', 'evaluate.seg.cfg', 'segmentation/configs/coco.py', 'evaluate.task=[seg]'])
    assert opts.train.base_lr == 1e-3 and opts.evaluate.seg.cfg == 'segmentation/configs/coco.py'
    assert list(opts.evaluate.task) == ['seg']
    with pytest.raises(ConfigError, match="key 'train.epochs' has no value"):
        parse_opts(['train.epochs'])


def test_get_config_opts_cli_and_output(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    path = osp.join(CONFIGS, 'group_vit_gcc_yfcc_30e.yml')
    cfg = get_config(args_for(path, opts=['train.seed=5', 'model.img_encoder.depths', '[2, 1, 1]'], batch_size=8,
                              tag='exp', resume='x.pth', keep=2, eval=True, amp_opt_level='O0'))
    assert cfg.data.seed == 5 and list(cfg.model.img_encoder.depths) == [2, 1, 1]
    assert (cfg.data.batch_size, cfg.checkpoint.resume, cfg.checkpoint.max_kept) == (8, 'x.pth', 2)
    assert cfg.evaluate.eval_only is True and cfg.train.amp_opt_level == 'O0'
    assert cfg.model_name == 'group_vit_gcc_yfcc_30e_bs8x2'
    assert cfg.output == osp.join('output', 'group_vit_gcc_yfcc_30e_bs8x2', 'exp')
    with pytest.raises(Exception, match='new_key'):
        cfg.train.new_key = 1
    pgseg = get_config(args_for(osp.join(CONFIGS, 'pgseg_specific.yml'), output='runs'))
    assert pgseg.output == osp.join('runs', 'pgseg_specific_bs1024x2', 'default')


def test_unknown_template_set_names_the_key_where_and_the_choices(tmp_path):
    path = osp.join(CONFIGS, 'group_vit_gcc_yfcc_30e.yml')
    choices = 'choose one of custom, full, identity, simple, subset'
    with pytest.raises(ConfigError) as err:
        get_config(args_for(path, opts=['evaluate.cls.template=fancy']))
    assert str(err.value) == f"'evaluate.cls.template' in --opts: unknown template set 'fancy'; {choices}"
    with pytest.raises(ConfigError, match=r"^'evaluate\.cls\.extra_templates' in --opts: unknown template set 'ful'"):
        get_config(args_for(path, opts=['evaluate.cls.extra_templates=[full,ful]']))
    bad = write(tmp_path / 'bad.yml', f'_base_: {path}\ndata:\n  text_aug:\n    template_set: plural\n')
    with pytest.raises(ConfigError, match=rf"^'data\.text_aug\.template_set' in {re.escape(bad)}: unknown template set 'plural'"):
        load_config(bad)
    cfg = get_config(args_for(path, opts=['evaluate.cls.template=custom', 'evaluate.seg.template', 'custom']))
    assert cfg.evaluate.cls.template == cfg.evaluate.seg.template == 'custom'


def test_get_config_rejects_unknown_opts_key():
    path = osp.join(CONFIGS, 'group_vit_gcc_yfcc_30e.yml')
    with pytest.raises(ConfigError, match=r"unknown key 'model\.img_encoder\.depth' in --opts \(did you mean 'depths'\?\)"):
        get_config(args_for(path, opts=['model.img_encoder.depth=3']))
    with pytest.raises(ConfigError, match=r"unknown key 'evaluate\.sge' in --opts"):
        get_config(args_for(path, opts=['evaluate.sge.cfg=x']))


def test_model_keys_follow_the_registered_constructor(tmp_path, monkeypatch):
    class Tiny:
        def __init__(self, width, depth=2):
            pass

    class TinyPlus(Tiny):
        def __init__(self, *args, gain=1.0, **kwargs):
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(config_module, '_model_registry', lambda: {'Tiny': Tiny, 'TinyPlus': TinyPlus})
    base = osp.join(CONFIGS, 'default.yml')
    good = write(tmp_path / 'good.yml', f'_base_: {base}\nmodel:\n  type: TinyPlus\n  width: 4\n  gain: 2\n')
    assert load_config(good).model.width == 4
    bad = write(tmp_path / 'bad.yml', f'_base_: {base}\nmodel:\n  type: Tiny\n  widht: 4\n')
    with pytest.raises(ConfigError, match="'model.widht' in .*bad.yml.*did you mean 'width'"):
        load_config(bad)
    bad = write(tmp_path / 'bad2.yml', f'_base_: {base}\nmodel:\n  type: TinyPlus\n  gian: 4\n')
    with pytest.raises(ConfigError, match="'model.gian' in .*bad2.yml.*did you mean 'gain'"):
        load_config(bad)


def test_pgseg_encoder_keys_include_the_forwarded_groupvit_arguments():
    path = osp.join(CONFIGS, 'pgseg_specific.yml')
    cfg = get_config(args_for(path, opts=['model.img_encoder.embed_dim=192']))
    assert cfg.model.img_encoder.embed_dim == 192
    with pytest.raises(ConfigError, match=r"unknown key 'model\.img_encoder\.embed_dims' in --opts"):
        get_config(args_for(path, opts=['model.img_encoder.embed_dims=192']))


def test_configs_saved_by_earlier_versions_load_without_their_retired_keys(tmp_path, caplog):
    saved = OmegaConf.load(osp.join(CONFIGS, 'toy', 'groupvit_tiny.yml'))
    saved.local_rank = 0
    saved.vis = []
    saved.checkpoint.freq = 1
    saved._base_ = osp.join(CONFIGS, 'default.yml')
    path = tmp_path / 'config.yaml'
    OmegaConf.save(saved, path)
    cfg = load_config(str(path))
    assert 'local_rank' not in cfg and 'vis' not in cfg and 'freq' not in cfg.checkpoint
    assert "ignoring 'local_rank'" in caplog.text and "ignoring 'checkpoint.freq'" in caplog.text
    with pytest.raises(ConfigError, match="unknown key 'visual'"):
        saved.visual = 1
        OmegaConf.save(saved, path)
        load_config(str(path))
