"""OVSegmentor on tiny models and hand cases: tokenizer, DINO and Hugging Face folder mapping, the mask loss, the
momentum encoder, trainable parameters per stage, loading rules, the training data, and both training stages through
main_pg_seg.py, evaluation through main_seg.py and the demo (the full-size comparison with the official code is in
test_ovsegmentor_reference.py)."""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from models import build_model, training_loss
from models.ovsegmentor.bert import Bert, BertFolderError, hf_bert_state_dict, load_tokenizer
from models.ovsegmentor.data import (ENTITY_CLASSES, EntityVocabulary, OVSegmentorSample, question_and_answer,
                                     read_cross_image)
from models.ovsegmentor.encoder import DinoCheckpointError, OVSegmentorGroupViT, dino_to_encoder_keys
from models.ovsegmentor.mask_loss import dice_loss, hungarian_match, mask_consistency_loss
from models.ovsegmentor.model import is_training_head
from utils.checkpoint import CheckpointError, load_weights, save_checkpoint
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY_BERT = ROOT / 'tests' / 'data' / 'ovsegmentor_tiny_bert'
VOCAB = (TINY_BERT / 'vocab.txt').read_text().splitlines()
FACTS = json.loads((ROOT / 'tests' / 'data' / 'ovsegmentor_state_dict.json').read_text())
STAGE1 = ROOT / 'configs' / 'toy' / 'ovsegmentor_stage1_tiny.yml'
STAGE2 = ROOT / 'configs' / 'toy' / 'ovsegmentor_stage2_tiny.yml'
TINY = {'img_encoder.img_size': 32, 'img_encoder.patch_size': 8, 'img_encoder.embed_dim': 32,
        'img_encoder.depths': [1, 1], 'img_encoder.num_heads': [2, 2], 'output_dim': 16}


def tiny_model(config=STAGE2, seed=0, **overrides):
    """The toy recipe's model at 32 px and width 32 (seconds on a CPU), with `overrides` ('a.b': value)."""
    cfg = OmegaConf.create(OmegaConf.to_container(load_config(str(config)).model, resolve=True))
    cfg.text_encoder.pretrained_path = str(TINY_BERT)
    for key, value in {**TINY, **overrides}.items():
        OmegaConf.update(cfg, key, value, merge=False)
    torch.manual_seed(seed)
    return build_model(cfg)


def tokens(model, texts):
    return model.tokenize(texts)


def batch(model, size=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    captions = ['a red star on a striped floor', 'two objects: a green ring and a yellow heart'][:size]
    return {'image': torch.randn(size, 3, 32, 32, generator=gen), 'text': tokens(model, captions),
            'question': tokens(model, ['a red [MASK] on a striped floor', 'two objects: a green [MASK] and a yellow '
                                                                           '[MASK]'][:size]),
            'answer': tokens(model, ['a photo of a star', 'a photo of a ring and heart'][:size]),
            'cross_image': torch.randn(size, 3, 32, 32, generator=gen),
            'cross_entity': tokens(model, ['A photo of star', 'A photo of heart'][:size])}


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_ids_come_from_the_folder_vocab():
    tokenizer = load_tokenizer(str(TINY_BERT))
    assert len(tokenizer) == len(VOCAB)
    model = tiny_model()
    out = model.tokenize(['A photo of a Star.', 'a [MASK] and a zebra'])
    assert set(out) == {'input_ids', 'attention_mask'} and out['input_ids'].shape == (2, 32)
    expected = [VOCAB.index(w) for w in ('[CLS]', 'a', 'photo', 'of', 'a', 'star', '.', '[SEP]')]
    assert out['input_ids'][0, :8].tolist() == expected and out['input_ids'][0, 8:].eq(0).all()
    assert out['attention_mask'][0].tolist() == [1] * 8 + [0] * 24
    # [MASK] is one special token (103 as in bert-base-uncased); a word outside the vocabulary is [UNK]
    assert out['input_ids'][1, :6].tolist() == [101, VOCAB.index('a'), 103, VOCAB.index('and'), VOCAB.index('a'), 100]
    long = model.tokenize([' '.join(['star'] * 50)])['input_ids'][0]
    assert long[0] == 101 and long[-1] == 102 and long.shape == (32,)


def test_tokenizer_refuses_a_folder_without_vocabulary(tmp_path):
    shutil.copy(TINY_BERT / 'config.json', tmp_path / 'config.json')
    with pytest.raises(BertFolderError, match='no vocab.txt'):
        load_tokenizer(str(tmp_path))
    with pytest.raises(BertFolderError, match='null'):
        load_tokenizer(None)


# ---------------------------------------------------------------- DINO and Hugging Face folders


def test_dino_names_map_as_published():
    mapping = dino_to_encoder_keys(FACTS['dino_vitbase16_keys'], [6, 6])
    assert mapping.pop('cls_token') is None
    assert {k: 'img_encoder.' + v for k, v in mapping.items()} == FACTS['dino_to_ovsegmentor']


def tiny_dino(depth=2, dim=32, patches=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {'cls_token': (1, 1, dim), 'pos_embed': (1, patches + 1, dim), 'patch_embed.proj.weight': (dim, 3, 8, 8),
              'patch_embed.proj.bias': (dim, ), 'norm.weight': (dim, ), 'norm.bias': (dim, )}
    for i in range(depth):
        shapes.update({f'blocks.{i}.norm1.weight': (dim, ), f'blocks.{i}.attn.qkv.weight': (3 * dim, dim),
                       f'blocks.{i}.attn.qkv.bias': (3 * dim, ), f'blocks.{i}.mlp.fc1.weight': (4 * dim, dim)})
    return {k: torch.randn(s, generator=gen) for k, s in shapes.items()}


def test_dino_file_fills_the_encoder(tmp_path):
    dino = tiny_dino()
    torch.save(dino, tmp_path / 'dino.pth')
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depths=[1, 1], num_heads=[2, 2], num_group_tokens=[8, 0],
                  num_output_groups=[4], imgnet_pretrained_checkpoint=str(tmp_path / 'dino.pth'))
    torch.manual_seed(0)
    encoder = OVSegmentorGroupViT(**kwargs, fixed=True)
    state = encoder.state_dict()
    assert torch.equal(state['pos_embed'], dino['pos_embed'][0, 1:]) and state['pos_embed'].dim() == 2
    assert torch.equal(state['layers.0.blocks.0.attn.qkv.weight'], dino['blocks.0.attn.qkv.weight'])
    assert torch.equal(state['layers.1.blocks.0.mlp.fc1.weight'], dino['blocks.1.mlp.fc1.weight'])
    assert torch.equal(state['patch_embed.proj.weight'], dino['patch_embed.proj.weight'])
    frozen = {n for n, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen == set(encoder.loaded_from_dino) and 'layers.0.group_token' not in frozen
    torch.save(tiny_dino(depth=3), tmp_path / 'deep.pth')
    with pytest.raises(DinoCheckpointError, match='block 2 has no place'):
        OVSegmentorGroupViT(**{**kwargs, 'imgnet_pretrained_checkpoint': str(tmp_path / 'deep.pth')})


def test_position_table_is_resized_in_eval_only():
    torch.manual_seed(0)
    encoder = OVSegmentorGroupViT(img_size=32, patch_size=8, embed_dim=32, depths=[1, 1], num_heads=[2, 2],
                                  num_group_tokens=[8, 0], num_output_groups=[4], imgnet_pretrained=None)
    assert encoder.get_pos_embed((4, 4)).shape == (1, 16, 32)
    with pytest.raises(RuntimeError):
        encoder(torch.randn(1, 3, 48, 32))
    encoder.eval()
    assert encoder(torch.randn(1, 3, 48, 32)).shape == (1, 32)


def hf_folder(tmp_path, weights_name, state):
    shutil.copy(TINY_BERT / 'config.json', tmp_path / 'config.json')
    shutil.copy(TINY_BERT / 'vocab.txt', tmp_path / 'vocab.txt')
    if weights_name.endswith('.bin'):
        torch.save(state, tmp_path / weights_name)
    else:
        from safetensors.torch import save_file
        save_file(state, tmp_path / weights_name)
    return str(tmp_path)


@pytest.mark.parametrize('weights_name', ['pytorch_model.bin', 'model.safetensors'])
def test_hugging_face_folder_loads(tmp_path, weights_name):
    torch.manual_seed(1)
    source = Bert(width=32, pretrained=False, pretrained_path=str(TINY_BERT)).transformer.state_dict()
    # the original bert-base-uncased layout: BertForPreTraining names, TensorFlow LayerNorm names, MLM heads
    published = {'bert.' + k.replace('LayerNorm.weight', 'LayerNorm.gamma').replace('LayerNorm.bias', 'LayerNorm.beta'):
                 v.clone() for k, v in source.items() if k != 'embeddings.position_ids'}
    published['cls.predictions.bias'] = torch.zeros(len(VOCAB))
    assert hf_bert_state_dict(published).keys() == source.keys() - {'embeddings.position_ids'}
    encoder = Bert(width=32, pretrained=True, pretrained_path=hf_folder(tmp_path, weights_name, published))
    for name, value in encoder.transformer.state_dict().items():
        assert torch.equal(value, source[name]), name


def test_hugging_face_folder_errors(tmp_path):
    with pytest.raises(BertFolderError, match='no weights'):
        Bert(width=32, pretrained=True, pretrained_path=hf_folder(tmp_path, 'unused.bin', {}))
    with pytest.raises(BertFolderError, match='width 768 differs'):
        Bert(width=768, pretrained=False, pretrained_path=str(TINY_BERT))
    (tmp_path / 'pytorch_model.bin').unlink(missing_ok=True)
    torch.save({'embeddings.word_embeddings.weight': torch.zeros(3, 32)}, tmp_path / 'pytorch_model.bin')
    with pytest.raises(BertFolderError, match='do not fit config.json'):
        Bert(width=32, pretrained=True, pretrained_path=str(tmp_path))


# ---------------------------------------------------------------- mask loss


def test_mask_loss_hand_case():
    # two groups whose order differs between the views: matching pairs them crosswise, the Dice is then perfect
    target = torch.tensor([[[10., -10., -10., -10.], [-10., 10., 10., 10.]]]).view(1, 2, 2, 2)
    pred = torch.tensor([[[0., 1., 1., 1.], [1., 0., 0., 0.]]]).view(1, 2, 2, 2)
    rows, cols = hungarian_match(pred.flatten(2), target.flatten(2).sigmoid())
    assert rows.tolist() == [[0, 1]] and cols.tolist() == [[1, 0]]
    assert float(mask_consistency_loss(pred, target)) == pytest.approx(0.0, abs=1e-7)
    # unmatched the same masks share nothing: 1 - (0 + 1) / (4 + 4 + 1), over 2 masks
    assert float(dice_loss(pred.flatten(2), (target.flatten(2) > 0).float())) == pytest.approx(4 / 9)
    # sigmoid(3, 0, -3, 2) = (.953, .5, .047, .881) >= 0.6 x .953 -> (1, 0, 0, 1); the prediction is min-max scaled
    one_target = torch.tensor([3., 0., -3., 2.]).view(1, 1, 2, 2)
    one_pred = torch.tensor([4., 2., 0., 0.]).view(1, 1, 2, 2)  # -> (1, .5, 0, 0)
    expected = 1 - (2 * 1.0 + 1) / (1.5 + 2 + 1)
    assert float(mask_consistency_loss(one_pred, one_target, threshold=0.6)) == pytest.approx(expected)
    assert float(mask_consistency_loss(one_pred, one_target, threshold=0.99)) == pytest.approx(
        1 - (2 * 1.0 + 1) / (1.5 + 1 + 1))


def test_mask_loss_gradient_skips_the_groups_least_like_the_entity():
    model = tiny_model(**{'img_encoder.drop_path_rate': 0.0}).eval()
    inputs = batch(model)
    q_proj = model.img_encoder.layers[0].downsample.assign.q_proj.weight
    parts = model.encode_image_parts(inputs['image'], model.img_encoder)
    loss = model.mask_loss(inputs['image'], parts, inputs['cross_image'], inputs['cross_entity'])
    assert torch.autograd.grad(loss, q_proj)[0].abs().sum() > 0
    model.group_ratio = 1.0  # every group frozen: no gradient reaches the online encoder
    parts = model.encode_image_parts(inputs['image'], model.img_encoder)
    loss = model.mask_loss(inputs['image'], parts, inputs['cross_image'], inputs['cross_entity'])
    assert torch.autograd.grad(loss, q_proj)[0].abs().sum() == 0


# ---------------------------------------------------------------- losses, momentum, trainable parameters


def test_losses_and_total_per_stage():
    stage1 = tiny_model(STAGE1).eval()
    terms = stage1.forward_train(**batch(stage1))
    assert set(terms) == {'matching', 'entity', 'loss'}
    torch.testing.assert_close(terms['loss'], terms['matching'] + terms['entity'])
    stage2 = tiny_model(STAGE2).eval()
    terms = stage2.forward_train(**batch(stage2))
    assert set(terms) == {'matching', 'entity', 'mask', 'loss'}
    torch.testing.assert_close(terms['loss'], terms['matching'] + terms['entity'] + 0.1 * terms['mask'])
    assert torch.equal(training_loss(terms), terms['loss'])  # the components are logged only, not added again
    inputs = batch(stage2)
    del inputs['cross_image']
    with pytest.raises(ValueError, match='lacks cross_image'):
        stage2.forward_train(**inputs)


def test_momentum_encoder_follows_the_online_encoder():
    model = tiny_model(STAGE2)
    online = dict(model.img_encoder.named_parameters())
    before = {n: p.detach().clone() for n, p in model.img_encoder_momentum.named_parameters()}
    assert all(torch.equal(before[n], online[n]) for n in before)  # a copy at build
    with torch.no_grad():
        for p in model.img_encoder.parameters():
            p.add_(1.0)
    model.end_step(0)
    for name, p in model.img_encoder_momentum.named_parameters():
        torch.testing.assert_close(p, 0.99 * before[name] + 0.01 * online[name], rtol=0, atol=1e-6)
        assert not p.requires_grad


def test_trainable_parameters_per_stage():
    stage1 = tiny_model(STAGE1)
    assert all(p.requires_grad for p in stage1.parameters())
    assert not any(n.startswith('img_encoder_momentum') for n, _ in stage1.named_parameters())
    stage2 = tiny_model(STAGE2)
    frozen = {n for n, p in stage2.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in stage2.named_parameters() if n.startswith(('text_encoder.', 'img_encoder_momentum.'))}
    assert frozen == expected and any(n.startswith('text_encoder.') for n in frozen)


def test_training_heads_follow_the_published_list():
    ignored = set(FACTS['ignored_by_evaluation_model']) - {'text_encoder.transformer.embeddings.position_ids'}
    assert {k for k in FACTS['keys'] if is_training_head(k)} == ignored
    assert not any(is_training_head(k) for k in FACTS['evaluation_model_keys'])


# ---------------------------------------------------------------- loading rules


def training_format_file(path, state):
    """A checkpoint in the published training format (model, optimizer, lr_scheduler, metrics, epoch, config)."""
    from collections import defaultdict
    metrics = defaultdict(float, max_accuracy=1.0)
    torch.save({'model': state, 'optimizer': {'state': {}, 'param_groups': []}, 'lr_scheduler': {}, 'metrics': metrics,
                'epoch': 9, 'config': OmegaConf.create({'model': {'type': 'MultiLabelContrastive'}})}, path)
    return str(path)


def test_loading_rules(tmp_path):
    stage2 = tiny_model(STAGE2, seed=1)
    stage1 = tiny_model(STAGE1, seed=2)
    evaluation = tiny_model(STAGE1, seed=3, use_entityloss=False)
    released = training_format_file(tmp_path / 'stage2.pth', stage2.state_dict())
    # the evaluation model ignores exactly the training heads
    load_weights(evaluation, released, strict=True)
    for name, value in evaluation.state_dict().items():
        assert torch.equal(value, stage2.state_dict()[name]), name
    load_weights(evaluation, training_format_file(tmp_path / 'stage1.pth', stage1.state_dict()), strict=True)
    assert torch.equal(evaluation.logit_scale, stage1.logit_scale)
    # anything else unexpected is still an error
    extra = {**stage2.state_dict(), 'img_encoder.extra': torch.zeros(1)}
    with pytest.raises(CheckpointError, match='unexpected: img_encoder.extra'):
        load_weights(evaluation, training_format_file(tmp_path / 'extra.pth', extra), strict=True)
    # a stage-1 file starts stage 2: the momentum encoder becomes a copy of the online one; logit_scale_mask is new
    fresh = tiny_model(STAGE2, seed=4)
    missing, unexpected = load_weights(fresh, str(tmp_path / 'stage1.pth'), strict=False)
    assert missing == ['logit_scale_mask'] and unexpected == []
    for name, value in fresh.img_encoder_momentum.state_dict().items():
        assert torch.equal(value, stage1.img_encoder.state_dict()[name]), name
    with pytest.raises(CheckpointError, match='missing: logit_scale_mask'):
        load_weights(tiny_model(STAGE2), str(tmp_path / 'stage1.pth'), strict=True)
    # this project's checkpoint format round-trips the full stage-2 model
    path = save_checkpoint(str(tmp_path / 'own'), stage2.state_dict())
    load_weights(fresh, path, strict=True)
    assert all(torch.equal(v, stage2.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_float64_model():
    model = tiny_model(STAGE2).double().eval()
    inputs = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in batch(model).items()}
    terms = model.forward_train(**inputs)
    assert terms['matching'].dtype == torch.float64 and terms['loss'].dtype == torch.float64
    assert terms['mask'].dtype == torch.float32  # computed in float32, as published
    assert model.encode_image(inputs['image']).dtype == torch.float64


# ---------------------------------------------------------------- training data


def test_questions_and_answers():
    vocabulary = EntityVocabulary()
    assert len(ENTITY_CLASSES) == 73
    question, answer = question_and_answer("A man's dog sits on a bus near two cats.", vocabulary,
                                           rng=random.Random(0))
    # "'s" is stripped as characters: 'sits' -> 'it', 'bus' -> 'bu' (never masked); 'cats.' -> cat
    assert question == 'A [MASK] [MASK] it on a bu near two [MASK]'
    from datasets.templates import full_templates
    prefixes = {t.split('{}')[0] for t in full_templates()}
    assert any(answer == p + 'people and dog and cat' for p in prefixes), answer
    question, answer = question_and_answer("A man's dog sits on a bus.", vocabulary, strip_chars="'",
                                           rng=random.Random(0))
    assert question == 'A mans [MASK] sits on a [MASK]' and answer.endswith(' dog and bus')
    assert vocabulary.entity_class('Mice') == 'mouse' and vocabulary.entity_class('TV') == 'tv'
    assert vocabulary.entity_class('children') == 'people' and vocabulary.entity_class('grass') is None
    assert vocabulary.caption_entities('Two dogs and a dog on a bus. The TV.') == ['dog', 'bus', 'TV']


@pytest.fixture(scope='module')
def toy_world(tmp_path_factory):
    from tools.make_toy_data import make_toy_world
    from tools.prepare_ovsegmentor_data import prepare
    world = tmp_path_factory.mktemp('ovseg') / 'toy'
    make_toy_world(str(world), train_samples=24, samples_per_shard=12, cls_samples=8, seg_val=3, seg_tune=1)
    summary = prepare(str(world / 'shards' / '*.tar'), str(world / 'ovsegmentor'), prefix='ovseg',
                      vocab=str(world / 'classes.json'), cross_images=3, samples_per_shard=10, seed=0)
    return world, summary


def test_prepared_shards_pair_images_that_share_an_entity(toy_world):
    import tarfile
    world, summary = toy_world
    assert summary['read'] == 24 and summary['kept'] == 24 and summary['shards'] == 3
    folder = world / 'ovsegmentor'
    samples = {}
    for shard in sorted(folder.glob('ovseg-*.tar')):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, ext = member.name.split('.', 1)
                samples.setdefault(int(key), {})[ext] = tar.extractfile(member).read()
    assert sorted(samples) == list(range(24))
    for index, sample in samples.items():
        info = json.loads(sample['json'])
        assert len(info['cross']) == 3 and info['entities']
        for word, other in info['cross']:
            assert word in info['entities'] and word in json.loads(samples[other]['json'])['entities']
            assert word in samples[other]['txt'].decode()
    from PIL import Image
    import io
    direct = read_cross_image(str(folder), 7)
    assert np.array_equal(np.asarray(direct), np.asarray(Image.open(io.BytesIO(samples[7]['jpg'])).convert('RGB')))


def test_sample_transform_builds_every_input(toy_world):
    world, _ = toy_world
    model = tiny_model(STAGE2)
    from datasets import build_img_transform
    cfg = load_config(str(STAGE2))
    cfg.data.root = str(world)
    transform = model.train_sample_transform(cfg.data, build_img_transform(True, cfg.data.img_aug))
    assert isinstance(transform, OVSegmentorSample)
    import tarfile
    from PIL import Image
    import io
    with tarfile.open(world / 'ovsegmentor' / 'ovseg-000000.tar') as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    sample = {'__url__': str(world / 'ovsegmentor' / 'ovseg-000000.tar'), '__key__': '000000000',
              **{name.split('.', 1)[1]: data for name, data in members.items() if name.startswith('000000000.')}}
    caption = sample['txt'].decode()
    random.seed(0)
    item = transform(sample, Image.open(io.BytesIO(sample['jpg'])).convert('RGB'), caption)
    assert set(item) == {'image', 'text', 'question', 'answer', 'cross_image', 'cross_entity'}
    assert item['image'].shape == item['cross_image'].shape == (3, 64, 64)
    tokenizer = load_tokenizer(str(TINY_BERT))
    decode = lambda t: tokenizer.decode(t['input_ids'][t['attention_mask'].bool()][1:-1])  # noqa: E731
    assert decode(item['text']) == caption.lower().replace(':', ' :').replace(',', ' ,')
    assert '[MASK]' in decode(item['question'])
    entities = json.loads(sample['json'])['entities']
    assert any(decode(item['cross_entity']) == f'a photo of {e}' for e in entities)
    del sample['json']
    from datasets.shards import BadSample
    with pytest.raises(BadSample):
        transform(sample, Image.open(io.BytesIO(sample['jpg'])).convert('RGB'), caption)


# ---------------------------------------------------------------- training, evaluation, demo


def write_config(tmp, world, name, base):
    changes = {
        'data': {'root': str(world), 'batch_size': 4, 'num_workers': 0, 'shuffle_buffer': 8,
                 'dataset': {'meta': {'toy_ovseg': {'length': 8}, 'toy_val': {'length': 8}}}},
        'model': {'img_encoder': {'embed_dim': 32, 'depths': [1, 1], 'num_heads': [2, 2]}, 'output_dim': 16,
                  'text_encoder': {'pretrained_path': str(TINY_BERT)}},
        'train': {'epochs': 1, 'warmup_epochs': 0},
        'evaluate': {'task': ['cls']},
    }
    cfg = OmegaConf.merge(OmegaConf.load(base), OmegaConf.create(changes))
    cfg._base_ = str(base.parent / OmegaConf.load(base)._base_)
    path = tmp / f'{name}.yml'
    OmegaConf.save(cfg, path)
    return str(path)


@pytest.fixture(scope='module')
def trained(toy_world, tmp_path_factory):
    import main_pg_seg
    from utils.checkpoint import find_latest_checkpoint
    world, _ = toy_world
    tmp = tmp_path_factory.mktemp('ovseg_runs')
    stage1_cfg = write_config(tmp, world, 'stage1', STAGE1)
    stage2_cfg = write_config(tmp, world, 'stage2', STAGE2)
    main_pg_seg.main([stage1_cfg, '--output', str(tmp / 'out')])
    stage1 = find_latest_checkpoint(str(next((tmp / 'out').glob('stage1_*')) / 'default'))
    main_pg_seg.main([stage2_cfg, '--output', str(tmp / 'out'), '--init', stage1])
    run2 = next((tmp / 'out').glob('stage2_*')) / 'default'
    return dict(tmp=tmp, world=world, stage1=stage1, stage2=find_latest_checkpoint(str(run2)), run2=run2,
                stage2_cfg=stage2_cfg)


def test_both_stages_train_through_main_pg_seg(trained):
    from utils.checkpoint import load_checkpoint
    log = (trained['run2'] / 'log.txt').read_text()
    assert 'mask' in log and 'entity' in log and 'matching' in log and 'zero-shot toy_val' in log
    metrics = [json.loads(line) for line in open(trained['run2'] / 'metrics.jsonl')]
    epoch = next(m for m in metrics if 'epoch/loss' in m)
    assert abs(epoch['epoch/total_loss'] - epoch['epoch/loss']) < 1e-6  # only 'loss' is trained
    stage1 = load_checkpoint(trained['stage1'])['model']
    stage2 = load_checkpoint(trained['stage2'])['model']
    assert not any(k.startswith('img_encoder_momentum') for k in stage1)
    text = [k for k in stage2 if k.startswith('text_encoder.') and stage2[k].is_floating_point()]
    assert text and all(torch.equal(stage1[k], stage2[k]) for k in text)  # BERT frozen in stage 2
    name = 'layers.0.blocks.0.attn.qkv.weight'
    online, ema = stage2[f'img_encoder.{name}'], stage2[f'img_encoder_momentum.{name}']
    assert not torch.equal(online, stage1[f'img_encoder.{name}']) and not torch.equal(ema, online)
    assert (ema - stage1[f'img_encoder.{name}']).abs().max() < (online - stage1[f'img_encoder.{name}']).abs().max()


def test_evaluates_through_main_seg_and_segments_in_the_demo(trained, capsys):
    import main_seg
    out = trained['tmp'] / 'seg'
    main_seg.main([trained['stage2_cfg'], '--resume', trained['stage2'], '--output', str(out), '--opts',
                   'evaluate.seg.cfg=segmentation/configs/_base_/datasets/toy.py',
                   f"evaluate.seg.opts=[data_root={trained['world']}/voc]"])
    (report,) = [p for p in os.listdir(out) if p.endswith('.json')]
    result = json.load(open(out / report))
    assert 0 <= result['mIoU'] <= 100 and 'background' in result['per_class']
    from demo.inference import Segmenter, free_vocabulary, load_model
    cfg = load_config(trained['stage2_cfg'])
    model = load_model(cfg, trained['stage2'])
    segmenter = Segmenter(model, cfg, 'toy', seg_opts=[f"data_root={trained['world']}/voc"])
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    pred = segmenter.predict(image, free_vocabulary(['star', 'ring', 'heart'], with_bg=True), bg_thresh=0.1)
    assert pred.labels.shape == (40, 56) and pred.labels.max() <= 3 and pred.groups
