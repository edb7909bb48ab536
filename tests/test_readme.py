"""Every fenced command of README.md, read from the README itself and run as written, in order, in a scratch copy
of the repository (markers and their keys: tests/readme_blocks.py).

The blocks depend on each other as they do for a reader (the quickstart's model feeds the demos): run the whole
module. `pytest -rA tests/test_readme.py` lists every block as run (PASSED) or skipped with the marker's reason.
"""
import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from readme_blocks import Block, fill, logical_lines, read_blocks, runnable_code
from test_app_browser import CHROMEDRIVER, CHROMIUM, chromium, free_port, segment_in_browser, wait_for

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
BLOCKS, MARKER_ERRORS = read_blocks(README)
COMMAND_TIMEOUT = 900
APP_IMAGE = 'demo/examples/toy_scene_1.png'
APP_NAMES = 'circle, square, triangle, star, ring, cross, heart, diamond'
# make and pytest settings of the caller would reach the README's own make commands otherwise
CALLER_ONLY = ('PYTHONPATH', 'VIRTUAL_ENV', 'MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'PYTEST_ADDOPTS',
               'PYTEST_CURRENT_TEST')


def test_every_fenced_block_is_marked():
    assert not MARKER_ERRORS, 'README blocks without a usable marker:\n' + '\n'.join(MARKER_ERRORS)
    assert any(block.kind == 'run' for block in BLOCKS)


def test_markers_that_cannot_be_followed_are_named_one_line_each(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text('\n'.join([
        'Intro.', '```bash', 'make nothing', '```',
        '<!-- readme: skip -->', '```bash', 'make gpus', '```',
        '<!-- readme: run', 'replace: --epochs 3 -> --epochs 1', '-->', '```bash', 'python train.py --epochs 30', '```',
        '<!-- readme: run', 'prints: done', 'omit: rm -rf | keeps the data', 'creates: out/a out/b', '-->',
        '```bash', 'python a.py \\', '    --flag x', 'rm -rf out  # start again', '```',
        '<!-- readme: run, no reason needed', 'colour: blue', '-->', '```sh', 'ls', '```',
        '<!-- readme: text, a layout -->', '```', 'a/', '```', '']))
    blocks, errors = read_blocks(readme)
    assert [block.line for block in blocks] == [2, 6, 12, 20, 28, 32]
    assert len(errors) == 4 and all('\n' not in error for error in errors)
    assert errors[0].startswith('README.md:2 (```bash make nothing): no marker before the block')
    assert errors[1].startswith('README.md:6') and 'a skip marker says why' in errors[1]
    assert errors[2].startswith('README.md:12') and "'--epochs 3' is not in the block" in errors[2]
    assert errors[3].startswith('README.md:28') and "cannot read marker line 'colour: blue'" in errors[3]
    ran, omitted = runnable_code(blocks[3], {})
    assert ran == 'python a.py      --flag x\n' and omitted == ['rm -rf out  # start again  (keeps the data)']
    assert blocks[3].prints == ['done'] and blocks[3].creates == ['out/a', 'out/b'] and not blocks[3].error
    assert (blocks[5].kind, blocks[5].reason) == ('text', 'a layout')


@pytest.fixture(scope='module')
def scratch(tmp_path_factory):
    """A copy of the repository's files (tracked and not ignored) with `.venv` pointing at this interpreter's
    environment, and the environment a user's shell has there: `python` is the venv's."""
    venv = Path(sys.prefix)
    installed = venv / '.installed'
    assert sys.prefix != sys.base_prefix and installed.is_file(), \
        f'run the README test with the project venv after `make install` (interpreter: {sys.executable})'
    folder = tmp_path_factory.mktemp('readme') / 'repo'
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split('\0')
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    (folder / '.venv').symlink_to(venv)
    # make rebuilds the venv when requirements.txt is newer than .venv/.installed: this venv is the installed one
    stamp = installed.stat().st_mtime
    os.utime(folder / 'requirements.txt', (stamp, stamp))
    env = {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}
    env.update(PATH=f"{folder / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", OMP_NUM_THREADS='1',
               MKL_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', GRADIO_ANALYTICS_ENABLED='False', HF_HUB_OFFLINE='1',
               PYTHONUNBUFFERED='1', MPLBACKEND='Agg')
    return {'dir': folder, 'env': env, 'python_so_far': '', 'unfinished': []}


def block_id(block: Block) -> str:
    return f'{block.where} {block.title()}'


@pytest.mark.parametrize('block', [b for b in BLOCKS if b.kind != 'text'], ids=block_id)
def test_readme_block(block, scratch):
    assert not block.error, block.error
    if block.kind == 'skip':
        print(f'{block.where} skipped: {block.reason}')
        pytest.skip(f'{block.where} {block.title()}: {block.reason}')
    earlier = f" (earlier blocks failed: {', '.join(scratch['unfinished'])})" if scratch['unfinished'] else ''
    scratch['unfinished'].append(block.where)
    placeholders = {'port': free_port()}
    code, omitted = runnable_code(block, placeholders)
    env = dict(scratch['env'], **{name: fill(value, placeholders) for name, value in block.env})
    for command in block.before:
        before = shell(command, scratch['dir'], env)
        assert before.returncode == 0, f'{block.where}{earlier} before: {command}\n{tail(before)}'
    seen = snapshot(block.creates, scratch['dir'])
    start = time.time()
    if block.app:
        # the test stops the apps itself: their exit status says nothing
        output, status = serve_and_browse(code, fill(block.app, placeholders), scratch['dir'], env), 0
    elif block.is_python:
        source = (scratch['python_so_far'] if block.continues else '') + code
        scratch['python_so_far'] = source
        result = run(['python', '-c', source], scratch['dir'], env)
        output, status = result.stdout + result.stderr, result.returncode
    else:
        result = shell(code, scratch['dir'], env)
        output, status = result.stdout + result.stderr, result.returncode
    print(f'{block.where} ran in {time.time() - start:.0f}s: {block.title()}'
          + ''.join(f'\n    omitted: {line}' for line in omitted))
    assert status == block.status, \
        f'{block.where}{earlier}: exit status {status}, expected {block.status}\n--- ran:\n{code}--- output:\n' \
        + output[-4000:]
    missing = [text for text in block.prints if text not in output]
    assert not missing, f'{block.where}{earlier}: the output lacks {missing}\n--- output:\n{output[-4000:]}'
    unwritten = [pattern for pattern in block.creates if not written(pattern, scratch['dir'], seen)]
    assert not unwritten, f'{block.where}{earlier}: nothing written at {unwritten}\n--- output:\n{output[-2000:]}'
    scratch['unfinished'].remove(block.where)


def run(argv, cwd, env):
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'{argv[-1][:200]} ran past {COMMAND_TIMEOUT}s; output so far:\n{e.stdout}\n{e.stderr}')


def shell(code, cwd, env):
    return run(['bash', '-e', '-o', 'pipefail', '-c', code], cwd, env)


def tail(result, chars=3000):
    return (result.stdout + result.stderr)[-chars:]


def snapshot(patterns, folder):
    """{path: (inode, mtime)} of what the `creates` globs match now."""
    return {path: signature(path) for pattern in patterns for path in glob.glob(str(folder / pattern))}


def signature(path):
    stat = os.stat(path)
    return stat.st_ino, stat.st_mtime_ns


def written(pattern, folder, seen):
    return any(seen.get(path) != signature(path) for path in glob.glob(str(folder / pattern)))


def serve_and_browse(code, url, cwd, env):
    """Each command starts the web app: wait until `url` answers, segment an example image in Chromium, check
    that the page names the model the app says it loaded, stop the app. -> the apps' output."""
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        'Chromium is missing: run tests/setup_browser.sh (make test does)'
    outputs = []
    for index, command in enumerate(logical_lines(code)):
        log_path = cwd / f'.readme_app_{index}.log'
        with open(log_path, 'w') as log:
            app = subprocess.Popen(['bash', '-c', f'exec {command}'], cwd=cwd, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)
        app.stdout = open(log_path)
        driver = None
        try:
            wait_for(url, app)
            driver = chromium(cwd.parent / f'chromium-profile-{index}')
            # the quickstart's model may have no groups: the overlay and the labels are what every model shows
            size, labels = segment_in_browser(driver, url, str(cwd / APP_IMAGE), APP_NAMES, 0.5,
                                              cwd.parent / f'app_{index}.png', groups=False)
            page = driver.find_element('tag name', 'body').text
        finally:
            if driver is not None:
                driver.quit()
            app.terminate()
            app.wait(timeout=30)
        output = log_path.read_text()
        outputs.append(output)
        said = [line.split('app: model = ', 1)[1] for line in output.splitlines() if 'app: model = ' in line]
        assert said and said[0] in page, f'{command}: the page does not name the model the app loaded\n{output}'
        assert size == Image.open(cwd / APP_IMAGE).size, f'{command}: overlay {size} for a {APP_IMAGE} upload'
        found = [line.split(':')[0] for line in labels.splitlines() if line.strip()]
        assert found and set(found) <= {'background', *APP_NAMES.split(', ')}, f'{command}: labels {labels!r}'
    return '\n'.join(outputs)
