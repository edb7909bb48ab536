"""The shared CLIP backbone: OpenAI's names and shapes, the same function as open_clip's CLIP, the position-embedding
resize rule, and the safe reader of OpenAI's TorchScript files (tensors equal; code-running pickles refused)."""
import copy
import io
import os
import pickle
import subprocess
import sys
import types
import warnings
import zipfile

import open_clip
import pytest
import torch
import torch.nn.functional as F

from models.clip import (CLIP, CLIP_ARCHITECTURES, architecture_from_state_dict, build_clip, read_openai_file,
                         resize_positional_embedding)
from reference_weights import openai_clip_entries, openai_like_state_dict
from utils.checkpoint import CheckpointError, read_checkpoint

TINY = dict(embed_dim=32, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16,
            context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)


def tiny_clip(seed=0):
    model = CLIP(**TINY)
    model.load_state_dict(openai_like_state_dict(model.state_dict(), seed=seed))
    return model.eval()


def tokens(n=3, length=9, seed=0):
    """[n, 77] token ids: start, random words, end-of-text (the largest id), zero padding."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 77, dtype=torch.long)
    out[:, 0] = 49406
    out[:, 1:length - 1] = torch.randint(300, 40000, (n, length - 2), generator=gen)
    out[:, length - 1] = 49407
    return out


def test_vit_b16_has_openai_names_and_shapes():
    entries = openai_clip_entries()
    assert len(entries) == 305
    tensors = {k: v['shape'] for k, v in entries.items() if k not in ('input_resolution', 'context_length',
                                                                       'vocab_size')}
    model = build_clip('ViT-B/16')
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == tensors
    assert architecture_from_state_dict(model.state_dict()) == CLIP_ARCHITECTURES['ViT-B/16']


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_equals_open_clip_on_the_same_weights(dtype):
    ours = tiny_clip().to(dtype)
    peer = open_clip.model.build_model_from_openai_state_dict(
        {k: v.clone() for k, v in ours.state_dict().items()}, cast_dtype=None).to(dtype).eval()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=dtype)
    text = tokens()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    with torch.no_grad():
        for a, b in ((ours.encode_image(image), peer.encode_image(image)), (ours.encode_text(text),
                                                                             peer.encode_text(text))):
            assert a.dtype == dtype and a.shape == b.shape
            assert ((a - b).abs().max() / b.abs().max()).item() < tol
    assert not torch.allclose(ours.encode_text(text)[0], ours.encode_text(text)[1])


def test_position_embedding_resize_rule():
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(1 + 14 * 14, 8, generator=gen, dtype=torch.float64)
    resized = resize_positional_embedding(pos, (21, 28))
    assert resized.shape == (1 + 21 * 28, 8) and torch.equal(resized[0], pos[0])
    grid = pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    by_scale = F.interpolate(grid, scale_factor=(21.1 / 14, 28.1 / 14), mode='bicubic', align_corners=False)
    assert torch.equal(resized[1:], by_scale.permute(0, 2, 3, 1).reshape(-1, 8))
    by_size = F.interpolate(grid, size=(21, 28), mode='bicubic', align_corners=False)
    assert (by_size - by_scale).abs().max() > 1e-3  # size= samples other points: the rule matters
    # one grid point by hand: bicubic (A = -0.75) at source row (i + 0.5) * 14 / 21.1 - 0.5, column likewise
    def cubic_weights(t):
        A = -0.75
        w = [((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A, ((A + 2) * t - (A + 3)) * t * t + 1,
             ((A + 2) * (1 - t) - (A + 3)) * (1 - t) * (1 - t) + 1]
        return w + [1 - sum(w)]
    i, j = 7, 11
    src_r, src_c = (i + 0.5) * 14 / 21.1 - 0.5, (j + 0.5) * 14 / 28.1 - 0.5
    r0, c0 = int(src_r // 1), int(src_c // 1)
    wr, wc = cubic_weights(src_r - r0), cubic_weights(src_c - c0)
    value = sum(wr[a] * wc[b] * grid[0, :, min(max(r0 - 1 + a, 0), 13), min(max(c0 - 1 + b, 0), 13)]
                for a in range(4) for b in range(4))
    assert torch.allclose(resized[1 + i * 28 + j], value, atol=1e-12)
    # published quirk: a grid with the native token count keeps the embedding as it is, even when not square
    assert resize_positional_embedding(pos, (7, 28)) is pos


def test_other_input_sizes_use_the_resized_embedding():
    model = tiny_clip()
    image = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        tokens_out = model.visual.embed(image)
    assert tokens_out.shape == (1 + 5 * 7, 1, 128)
    with pytest.raises(ValueError, match='smaller than one 16-pixel patch'):
        model.visual.embed(torch.randn(1, 3, 15, 64))


class OpenAIStyleCLIP(torch.nn.Module):
    """What OpenAI's traced file holds: CLIP's modules plus the three integers as 0-dim int64 tensors."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            setattr(self, name, child)
        for name in ('positional_embedding', 'text_projection', 'logit_scale'):
            setattr(self, name, getattr(clip, name))
        self.register_buffer('input_resolution', torch.tensor(64))
        self.register_buffer('context_length', torch.tensor(clip.context_length))
        self.register_buffer('vocab_size', torch.tensor(49408))
        self.clip = [clip]  # not a submodule: the forward only

    def forward(self, image, text):
        return self.clip[0].encode_image(image), self.clip[0].encode_text(text)


def write_traced_clip(model, path):
    """torch.jit.trace + save of `model` in OpenAI's layout, the tensors OpenAI stores as float16 stored so."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(OpenAIStyleCLIP(copy.deepcopy(model)),
                                 (torch.randn(1, 3, 64, 64), tokens(1)[:, :model.context_length]), check_trace=False)
    entries = openai_clip_entries()
    with torch.no_grad():
        for name, param in traced.named_parameters():
            if entries[name]['stored_dtype'] == 'float16':
                param.data = param.data.half()
    torch.jit.save(traced, str(path))


def test_reads_a_torchscript_clip_file(tmp_path):
    model = tiny_clip(seed=3)
    path = tmp_path / 'tiny.pt'
    write_traced_clip(model, path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    assert any(n.endswith('/constants.pkl') for n in names) and any('/code/' in n for n in names)
    state_dict, integers = read_openai_file(path)
    expected = model.state_dict()
    assert set(state_dict) == set(expected)
    for name, value in expected.items():
        assert state_dict[name].dtype == torch.float32 and torch.equal(state_dict[name], value), name
    assert integers == {'input_resolution': 64, 'context_length': 77, 'vocab_size': 49408}

    rebuilt = build_clip(str(path)).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt.encode_image(image), model.encode_image(image))
        assert torch.equal(rebuilt.encode_text(tokens()), model.encode_text(tokens()))


def test_reads_a_torch_save_state_dict(tmp_path):
    model = tiny_clip(seed=4)
    torch.save(model.state_dict(), tmp_path / 'sd.pt')
    state_dict, integers = read_openai_file(tmp_path / 'sd.pt')
    assert integers == {} and all(torch.equal(state_dict[k], v) for k, v in model.state_dict().items())


def write_archive(path, data_pkl, storages=()):
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('archive/data.pkl', data_pkl)
        archive.writestr('archive/constants.pkl', pickle.dumps((), protocol=2))  # what marks a TorchScript archive
        archive.writestr('archive/version', '3\n')
        for key, raw in storages:
            archive.writestr(f'archive/data/{key}', raw)


class SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Evaluate:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


def torchscript_module_holding(payload):
    """A pickle of a `__torch__.*` module whose attributes include `payload` (as OpenAI's data.pkl nests modules)."""
    package, module = types.ModuleType('__torch__'), types.ModuleType('__torch__.clip')
    module.Visual = type('Visual', (), {'__module__': '__torch__.clip'})
    sys.modules.update({'__torch__': package, '__torch__.clip': module})
    try:
        obj = module.Visual()
        obj.__dict__.update(proj=payload, training=False)
        return pickle.dumps(obj, protocol=2)
    finally:
        del sys.modules['__torch__'], sys.modules['__torch__.clip']


def malicious_data_pkl(kind, marker):
    """A data.pkl whose unpickling creates `marker`."""
    if kind == 'os.system':
        return pickle.dumps({'visual.proj': SystemCall(f'touch {marker}')}, protocol=2)
    if kind == 'builtins.eval':
        return pickle.dumps(Evaluate(f'open({str(marker)!r}, "w").close()'), protocol=2)
    return torchscript_module_holding(SystemCall(f'touch {marker}'))


# what a permissive loader (torch.jit.load) provides: the archive's __torch__ classes exist
PLAIN_UNPICKLING = ('import pickle, sys, types\n'
                    'module = types.ModuleType("__torch__.clip"); module.Visual = type("Visual", (), {})\n'
                    'sys.modules.update({"__torch__": types.ModuleType("__torch__"), "__torch__.clip": module})\n'
                    'pickle.loads(sys.stdin.buffer.read())')


@pytest.mark.parametrize('kind', ['os.system', 'builtins.eval', 'torchscript module'])
def test_refuses_a_data_pkl_that_would_run_code(tmp_path, kind):
    marker = tmp_path / 'payload_ran'
    payload = malicious_data_pkl(kind, marker)
    path = tmp_path / 'evil.pt'
    write_archive(path, payload)
    for read in (read_openai_file, build_clip, read_checkpoint):  # read_checkpoint: what --resume uses
        with pytest.raises(CheckpointError) as error:
            read(str(path))
        message = str(error.value)
        assert '\n' not in message and 'refused to unpickle' in message
        assert ('builtins.eval' if kind == 'builtins.eval' else 'system') in message
    assert not marker.exists()
    # the same bytes are live: plain unpickling in another process runs the payload
    subprocess.run([sys.executable, '-c', PLAIN_UNPICKLING], input=payload, check=False, capture_output=True)
    assert marker.exists()


def test_bad_files_give_one_line(tmp_path):
    (tmp_path / 'notes.txt').write_text('hello')
    cases = {tmp_path / 'missing.pt': 'no such file', tmp_path / 'notes.txt': 'not a zip archive'}
    no_pkl = tmp_path / 'empty.pt'
    with zipfile.ZipFile(no_pkl, 'w') as archive:
        archive.writestr('archive/version', '3\n')
    cases[no_pkl] = 'data.pkl'
    missing_storage = tmp_path / 'nostorage.pt'
    buffer = io.BytesIO()
    torch.save({'w': torch.zeros(4)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source:
        root = source.namelist()[0].split('/')[0]
        data_pkl = source.read(f'{root}/data.pkl')
    write_archive(missing_storage, data_pkl)
    cases[missing_storage] = 'missing from the archive'
    for path, words in cases.items():
        with pytest.raises(CheckpointError) as error:
            read_openai_file(path)
        assert words in str(error.value) and '\n' not in str(error.value)
    with pytest.raises(ValueError, match="neither a CLIP architecture"):
        build_clip('ViT-H/99')
