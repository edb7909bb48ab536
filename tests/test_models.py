import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.groupvit.grouping import gumbel_softmax, hard_softmax
from models.layers import DistributedBatchNorm1d
from models.pgseg.prototypes import (gather_matched, high_relevance_mask, hungarian_match, prototype_contrastive_loss)
from conftest import published_state_dict, tiny_model_cfg
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(kind='GroupViT', multi_label=0, **img):
    return tiny_model_cfg(kind.lower(), multi_label=multi_label, **{f'img_encoder.{k}': v for k, v in img.items()})


def tokens(shape):
    t = torch.randint(1, 60, shape)
    t[..., 6] = 63  # end-of-text: the largest id
    return t


@pytest.mark.parametrize('kind', ['GroupViT', 'PGSeg'])
def test_shapes(kind):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(kind)).eval()
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.encode_image(img).shape == (2, 16)
        out = model.encode_image(img, return_feat=True, as_dict=True)
        assert out['image_x'].shape == (2, 16) and out['image_feat'].shape == (2, 4, 16)
        assert model.encode_text(tokens((3, 12))).shape == (3, 16)
        emb = model.build_text_embedding(tokens((5, 2, 12)))
        assert emb.shape == (5, 16)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(5))
        attn = model.img_encoder(img, return_attn=True, as_dict=True)['attn_dicts']
        assert [a['soft'].shape for a in attn[:2]] == [(2, 1, 8, 16), (2, 1, 4, 8)]
        assert attn[2] is None
        # another input size: the position embedding is interpolated
        assert model.encode_image(torch.randn(1, 3, 48, 40)).shape == (1, 16)


@pytest.mark.parametrize('kind,multi_label', [('GroupViT', 0), ('GroupViT', 2), ('PGSeg', 0)])
def test_gradients_reach_every_trainable_parameter(kind, multi_label):
    torch.manual_seed(0)
    cfg = tiny_cfg(kind, multi_label, **({'num_group_tokens': [8, 8, 0], 'num_output_groups': [8, 8],
                                          'empty_selection_as_zero': True} if kind == 'PGSeg' else {}))
    model = build_model(cfg).train()
    text = tokens((4, 1 + multi_label, 12)) if multi_label else tokens((4, 12))
    losses = model.forward_train(torch.randn(4, 3, 32, 32), text)
    expected = {'loss'} | ({'loss_pg'} if kind == 'PGSeg' else set()) | ({'multi_label_loss'} if multi_label else set())
    assert set(losses) == expected
    sum(losses.values()).backward()
    unused = {n for n, _ in model.named_parameters() if n.startswith('img_encoder.mapping_text.')}
    for name, p in model.named_parameters():
        if name in unused:
            assert p.grad is None, f'{name} is documented as unused'
            continue
        assert p.grad is not None, f'no gradient reaches {name}'
        assert torch.isfinite(p.grad).all(), name
    nonzero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(nonzero) >= 0.9 * (len(list(model.parameters())) - len(unused))
    if kind == 'PGSeg':
        assert model.img_encoder.logit_scale.grad.abs() > 0  # the prototype loss reaches its own temperature


def test_hard_assignments_are_one_hot():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 20, requires_grad=True)
    for y in (hard_softmax(logits, dim=-2), gumbel_softmax(logits, hard=True, dim=-2)):
        assert torch.allclose(y.sum(dim=-2), torch.ones(2, 1, 20))
        assert torch.allclose(y, y.round(), atol=1e-6)
        y.sum().backward()  # straight-through: the soft gradient exists
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        attn = model.img_encoder(torch.randn(2, 3, 32, 32), return_attn=True, as_dict=True)['attn_dicts']
    for a in attn[:2]:
        hard = a['hard']
        assert torch.allclose(hard.sum(dim=-2), torch.ones_like(hard.sum(dim=-2)))
        assert torch.equal(hard.round().argmax(dim=-2), a['soft'].argmax(dim=-2))


def brute_force_assignment(cost):
    n = cost.shape[0]
    best = min(itertools.permutations(range(n)), key=lambda perm: sum(cost[i, perm[i]] for i in range(n)))
    return list(best)


@pytest.mark.parametrize('most_similar', [False, True])
def test_hungarian_matching_equals_brute_force(most_similar):
    torch.manual_seed(0)
    groups, protos = torch.randn(5, 6, 4), torch.randn(5, 6, 4)
    index = hungarian_match(groups, protos, most_similar=most_similar)
    sim = F.normalize(groups, dim=-1) @ F.normalize(protos, dim=-1).transpose(1, 2)
    for b in range(5):
        cost = -sim[b] if most_similar else sim[b]
        assert index[b].tolist() == brute_force_assignment(cost.numpy())
    matched = gather_matched(protos, index)
    assert torch.equal(matched[1, 2], protos[1, index[1, 2]])


def test_high_relevance_selection_by_hand():
    sim = torch.tensor([[[0.9, 0.1, 0.0],
                         [0.5, 0.8, 0.2],
                         [0.1, 0.3, 0.7]]])
    # column-wise min-max: col0 (0.1..0.9) -> [1.0, 0.5, 0.0]; the published score is column 0 for every row
    assert high_relevance_mask(sim, 0.1).tolist() == [[True, True, False]]
    # diagonal: col1 (0.1..0.8) row1 -> 1.0; col2 (0..0.7) row2 -> 1.0; row0 col0 -> 1.0
    assert high_relevance_mask(sim, 0.1, diagonal=True).tolist() == [[True, True, True]]


def test_prototype_loss_by_hand():
    groups = torch.tensor([[[1., 0.], [0., 1.], [-1., 0.]]])
    protos = torch.tensor([[[1., 0.], [0., 1.], [-1., 0.]]])
    scale = torch.tensor(0.)  # exp(0) = 1
    sim = groups @ protos.transpose(1, 2)  # already unit vectors
    # published HRS keeps rows whose column-0 min-max score > 0.1: rows 0 and 1 (scores 1.0, 0.5)
    rows = sim.transpose(1, 2)[0, :2]
    expected = 2 * F.cross_entropy(rows, torch.tensor([0, 1]))  # symmetric: sim is symmetric here
    loss = prototype_contrastive_loss(groups, protos, scale)
    assert torch.allclose(loss, expected)
    manual = -(torch.log_softmax(torch.tensor([1., 0., -1.]), 0)[0] + torch.log_softmax(torch.tensor([0., 1., 0.]), 0)[1])
    assert torch.allclose(loss, manual)  # 2 * mean of the two rows
    # empty selection: NaN as published, or 0 when asked
    same = torch.ones(1, 3, 2)
    assert torch.isnan(prototype_contrastive_loss(same, same, scale))
    assert prototype_contrastive_loss(same, same, scale, empty_as_zero=True) == 0


@pytest.mark.parametrize('cfg_file,ref_file', [
    ('configs/group_vit_gcc_yfcc_30e.yml', 'official_state_dict_groupvit_gcc_yfcc_30e.json'),
    ('configs/group_vit_gcc_redcap_30e.yml', None),
    ('configs/pgseg_specific.yml', 'official_state_dict_pgseg_specific.json'),
])
def test_full_size_models_have_the_published_names_and_shapes(cfg_file, ref_file):
    model = build_model(load_config(str(ROOT / cfg_file)).model)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    if ref_file is None:  # RedCaps: the YFCC names without the multi-label temperature
        ref = published_state_dict('groupvit_gcc_yfcc_30e')
        keys = {k: v for k, v in ref['keys'].items() if k != 'multi_label_logit_scale'}
    else:
        keys = published_state_dict(ref_file.replace('official_state_dict_', '').replace('.json', ''))['keys']
    assert set(ours) == set(keys)
    assert all(ours[k] == list(keys[k]) for k in keys)


def test_pos_embed_from_another_resolution_loads(tmp_path):
    from safetensors.torch import save_file
    from utils.checkpoint import load_weights
    torch.manual_seed(0)
    small = build_model(tiny_cfg())
    big = build_model(tiny_cfg(img_size=64))
    save_file(small.state_dict(), str(tmp_path / 'small.safetensors'))
    load_weights(big, str(tmp_path / 'small.safetensors'))
    small, big = small.img_encoder, big.img_encoder
    assert big.pos_embed.shape == (1, 64, 32)
    grid = small.pos_embed.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode='bicubic', align_corners=False)
    assert torch.allclose(big.pos_embed, expected.permute(0, 2, 3, 1).reshape(1, 64, 32))


def test_distributed_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    ours, ref = DistributedBatchNorm1d(6), torch.nn.BatchNorm1d(6)
    x = torch.randn(5, 6, 3)
    assert torch.equal(ours(x), ref(x))
    assert torch.equal(ours.running_var, ref.running_var)


def test_gumbel_switch_and_noise_scale():
    """Published default: Gumbel noise in training exactly when assignments are hard; `gumbel: false` or a zero
    noise scale give the noise-free (eval-like) assignment in training."""
    img = torch.randn(2, 3, 32, 32)

    def train_forward(**img_cfg):
        torch.manual_seed(0)
        enc = build_model(tiny_cfg(drop_path_rate=0.0, **img_cfg)).img_encoder.train()
        return enc(img), enc

    noisy, enc = train_forward()
    assert all(layer.downsample.assign.gumbel for layer in enc.layers[:2])
    assert not torch.equal(noisy, enc(img))  # a fresh noise sample
    quiet, enc = train_forward(gumbel=False)
    assert torch.equal(quiet, enc(img))
    assert torch.equal(quiet, enc.eval()(img))
    scaled, _ = train_forward(gumbel_scale=0.0)
    assert torch.allclose(scaled, quiet, atol=1e-6)


def test_best_group_multi_label_loss_by_hand():
    """multi_label_match 'best_group': an image-prompt score is the prompt's cosine with the image's best final group
    (both directions of the soft-target InfoNCE)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg('groupvit', multi_label=2, multi_label_match='best_group')).double()
    groups, words = torch.randn(3, 4, 16, dtype=torch.float64), torch.randn(3, 2, 16, dtype=torch.float64)
    got = model.best_group_multi_label_loss(groups, words)
    g, w = F.normalize(groups, dim=-1), F.normalize(words, dim=-1).flatten(0, 1)  # w: [6, 16], rows 2b, 2b+1 of b
    scale = model.multi_label_logit_scale.exp()
    score = torch.stack([torch.stack([(g[b] @ w[n]).max() for n in range(6)]) for b in range(3)]) * scale  # [3, 6]
    loss_img = torch.stack([-(torch.log_softmax(score[b], 0)[2 * b:2 * b + 2]).mean() for b in range(3)]).mean()
    loss_word = torch.stack([-torch.log_softmax(score[:, n], 0)[n // 2] for n in range(6)]).mean()
    assert torch.allclose(got, 0.5 * (loss_img + loss_word), atol=1e-12)
    with pytest.raises(ValueError, match="multi_label_match must be 'image' or 'best_group'"):
        build_model(tiny_model_cfg('groupvit', multi_label=2, multi_label_match='groups'))


def test_best_group_matching_trains_through_forward_train():
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg('groupvit', multi_label=2, multi_label_match='best_group')).train()
    losses = model.forward_train(torch.randn(4, 3, 32, 32), tokens((4, 3, 12)))
    assert set(losses) == {'loss', 'multi_label_loss'} and torch.isfinite(losses['multi_label_loss'])
    losses['multi_label_loss'].backward()
    grouping = [p.grad for n, p in model.img_encoder.named_parameters() if '.downsample.' in n]
    assert grouping and any(g is not None and g.abs().sum() > 0 for g in grouping)  # reaches the grouping blocks
