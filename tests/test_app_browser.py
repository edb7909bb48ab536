"""End-to-end test of demo/app.py in a real headless Chromium (Debian's chromium + chromium-driver, Selenium).

Installed by tests/setup_browser.sh. Runs offline: the app listens on 127.0.0.1 and Chromium's own network
features are switched off. Set APP_SCREENSHOT=/some/file.png to also copy the screenshot there.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

from demo_helpers import ROOT, sharp_checkpoint, toy_images, two_scene_image

CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
CHROMIUM_FLAGS = ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--no-first-run', '--disable-extensions', '--disable-default-apps', '--window-size=1400,1300')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for(url, proc, timeout=150):
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f'app exited with {proc.returncode}: {proc.stdout.read()}')
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f'{url} did not answer within {timeout}s')


def start_app(args, log_path):
    """-> (process, url) of `python demo/app.py ARGS` on a free local port."""
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED='False', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    log = open(log_path, 'w')
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, 'demo', 'app.py'), *args, '--port', str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.stdout = open(log_path)
    return proc, f'http://127.0.0.1:{port}/'


def chromium(profile_dir):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f'--user-data-dir={profile_dir}')
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def segment_in_browser(driver, url, image_path, names, bg_thresh, screenshot, timeout=90, groups=True):
    """Upload, type, set the threshold, click Segment -> (overlay natural size (w, h), labels text); groups: also
    wait for the final-groups picture (a model with groups)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#input-image input[type=file]')))
    upload.send_keys(image_path)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, '#input-image img')))
    box = driver.find_element(By.CSS_SELECTOR, '#class-names textarea')
    box.clear()
    box.send_keys(names)
    number = driver.find_element(By.CSS_SELECTOR, '#bg-thresh input[type=number]')
    number.clear()
    number.send_keys(str(bg_thresh))
    driver.find_element(By.CSS_SELECTOR, '#segment').click()
    wait.until(lambda d: d.execute_script(
        "const i = document.querySelector('#overlay img'); return i && i.complete && i.naturalWidth > 0;"))
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, '#labels textarea').get_attribute('value'))
    if groups:
        wait.until(lambda d: d.execute_script(
            "const i = document.querySelector('#groups img'); return i && i.complete && i.naturalWidth > 0;"))
    size = driver.execute_script(
        "const i = document.querySelector('#overlay img'); return [i.naturalWidth, i.naturalHeight];")
    labels = driver.find_element(By.CSS_SELECTOR, '#labels textarea').get_attribute('value')
    driver.save_screenshot(str(screenshot))
    return tuple(size), labels


def app_in_chromium(tmp_path, app_args, image_path, names, bg_thresh, groups=True):
    """Start `demo/app.py APP_ARGS`, segment IMAGE_PATH with NAMES in Chromium -> (overlay size (w, h), labels text,
    protocol text, screenshot path)."""
    from selenium.webdriver.common.by import By
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        'Chromium is missing: run tests/setup_browser.sh (make test does)'
    proc, url = start_app(app_args, tmp_path / 'app.log')
    driver = None
    screenshot = tmp_path / 'app_screenshot.png'
    try:
        wait_for(url, proc)
        driver = chromium(tmp_path / 'chromium-profile')
        size, labels = segment_in_browser(driver, url, str(image_path), names, bg_thresh, screenshot, groups=groups)
        protocol = driver.find_element(By.CSS_SELECTOR, '#protocol textarea').get_attribute('value')
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    print(f'app screenshot: {screenshot}')
    if os.environ.get('APP_SCREENSHOT'):
        shutil.copy(screenshot, os.environ['APP_SCREENSHOT'])
    return size, labels, protocol, screenshot


def names_found(labels):
    return {line.split(':')[0] for line in labels.splitlines() if line.strip()}


def test_app_segments_an_uploaded_image_in_chromium(tmp_path):
    cfg, ckpt = sharp_checkpoint(tmp_path)
    big = tmp_path / 'upload.png'
    Image.fromarray(two_scene_image(toy_images(tmp_path / 'toy', count=2))).save(big)
    size, labels, protocol, screenshot = app_in_chromium(
        tmp_path, ['--cfg', cfg, '--resume', ckpt, '--dataset', 'toy'], big,
        'circle, square, triangle, star, ring, cross, heart, diamond', 0)
    assert size == (256, 128)
    found = names_found(labels)
    assert len(found) > 1, labels
    assert found <= {'background', 'circle', 'square', 'triangle', 'star', 'ring', 'cross', 'heart', 'diamond'}
    assert 'toy' in protocol, protocol
    shot = np.asarray(Image.open(screenshot).convert('RGB'))
    assert shot.shape[0] > 500 and shot.std() > 10


def test_app_runs_a_training_free_method_in_chromium(tmp_path):
    """`--method sclip --dataset voc21` on an OpenAI-style CLIP file: SCLIP's published rule, typed names."""
    from conftest import build_tiny, tiny_config_path
    from reference_weights import openai_like_state_dict
    from test_clip_backbone import write_traced_clip
    clip = build_tiny('sclip').clip
    clip.load_state_dict(openai_like_state_dict(clip.state_dict(), seed=3))
    write_traced_clip(clip.eval(), str(tmp_path / 'tiny_openai.pt'))
    upload = tmp_path / 'upload.png'
    Image.fromarray(two_scene_image(toy_images(tmp_path / 'toy', count=2))).save(upload)
    size, labels, protocol, _ = app_in_chromium(
        tmp_path, ['--method', 'sclip', '--cfg', tiny_config_path('sclip'), '--resume', str(tmp_path / 'tiny_openai.pt'),
                   '--dataset', 'voc21'], upload, 'dog, cat, sky', 0.2, groups=False)
    assert size == (256, 128)
    assert names_found(labels) and names_found(labels) <= {'background', 'dog', 'cat', 'sky'}, labels
    assert 'protocol=SCLIP' in protocol and "'prob_thd': 0.2" in protocol and 'free (4 names' in protocol, protocol
