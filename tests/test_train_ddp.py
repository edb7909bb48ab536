"""2 processes (gloo) on batch 2 + 2 give the loss and parameter gradients of 1 process on the batch of 4.

This checks the global contrastive loss end to end: the differentiable all-gather, the rank offset of the labels,
the batch norms' global statistics in the projectors, DDP's gradient averaging (utils.distributed.wrap_ddp).
Run in float64: the check is about what is computed, not about float32 rounding (in float32 the projectors'
one-pass global variance, E[x^2] - E[x]^2 over 4 samples, already differs from BatchNorm1d's by ~1e-3 in the loss).
Run by pytest; torchrun runs this same file as the worker script.
"""
import os
import socket
import subprocess
import sys

import torch
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI_LABEL = (0, 2)


def model_cfg(multi_label):
    return OmegaConf.create({
        'type': 'MultiLabelContrastive', 'output_dim': 16, 'proj_num_layers': 2, 'multi_label': multi_label,
        'img_encoder': {'type': 'GroupViT', 'img_size': 32, 'patch_size': 8, 'embed_dim': 16, 'depths': [1, 1, 1],
                        'num_heads': [2, 2, 2], 'embed_factors': [1, 1, 1], 'num_group_tokens': [8, 4, 0],
                        'num_output_groups': [8, 4], 'hard_assignment': False, 'drop_path_rate': 0.0},
        'text_encoder': {'type': 'TextTransformer', 'context_length': 8, 'width': 16, 'layers': 1,
                         'vocab_size': 100}})


def make_model(multi_label):
    from models import build_model
    torch.manual_seed(0)
    return build_model(model_cfg(multi_label)).double()


def make_batch(multi_label):
    """image [4, 3, 32, 32]; text [4, 8] or [4, 1 + k, 8] with an end token (id 99) at varying places."""
    g = torch.Generator().manual_seed(1)
    image = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    shape = (4, 8) if multi_label == 0 else (4, 1 + multi_label, 8)
    text = torch.randint(1, 98, shape, generator=g)
    ends = torch.randint(2, 8, shape[:-1], generator=g)
    text.scatter_(-1, ends.unsqueeze(-1), 99)
    return image, text


def loss_and_grads(model, image, text, runner=None):
    """runner: what the forward goes through (the DDP wrapper), default the model itself."""
    losses = (runner or model)(image=image, text=text)
    loss = sum(losses.values())
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def worker(out_path):
    import torch.distributed as dist

    from utils.distributed import (close_distributed, gather_objects, init_distributed, mean_over_ranks,
                                   sum_over_ranks, true_on_every_rank, wrap_ddp)
    device = init_distributed()
    rank = dist.get_rank()
    results = {'helpers': {
        'sum': sum_over_ranks(torch.tensor([rank + 1.0])), 'mean': mean_over_ranks(torch.tensor([rank + 1.0])),
        'objects': gather_objects({'rank': rank}), 'all_true': true_on_every_rank(True, device),
        'one_false': true_on_every_rank(rank == 0, device)}}
    for k in MULTI_LABEL:
        model = make_model(k)
        ddp = wrap_ddp(model, device)
        image, text = make_batch(k)
        assert ddp is not model
        loss, grads = loss_and_grads(model, image[2 * rank:2 * rank + 2], text[2 * rank:2 * rank + 2], ddp)
        dist.all_reduce(loss)
        results[k] = {'loss': loss / dist.get_world_size(), 'grads': grads}
    if rank == 0:
        torch.save(results, out_path)
    close_distributed()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process(tmp_path):
    out = tmp_path / 'ddp.pt'
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(free_port()),
           __file__, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    distributed = torch.load(out)
    helpers = distributed.pop('helpers')
    assert helpers['sum'].item() == 3.0 and helpers['mean'].item() == 1.5
    assert helpers['objects'] == [{'rank': 0}, {'rank': 1}]
    assert helpers['all_true'] is True and helpers['one_false'] is False
    for k in MULTI_LABEL:
        model = make_model(k)
        loss, grads = loss_and_grads(model, *make_batch(k))
        other = distributed[k]
        assert torch.allclose(other['loss'], loss, rtol=1e-10, atol=1e-12), (k, other['loss'], loss)
        assert set(other['grads']) == set(grads) == {n for n, p in model.named_parameters() if p.requires_grad}
        for name, g in grads.items():
            assert torch.allclose(other['grads'][name], g, rtol=1e-7, atol=1e-10), (k, name)
        if k:
            assert 'multi_label_loss' in model(*make_batch(k))


if __name__ == '__main__':
    sys.path.insert(0, REPO)
    worker(sys.argv[1])
