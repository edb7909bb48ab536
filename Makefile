VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers; loadfile keeps a file's tests in one worker (the README blocks run in order)
TEST_WORKERS ?= 2
MINUTES ?= 15
# EPOCHS=N trains N epochs instead of fitting MINUTES (EPOCHS=1: a quick check of the whole pipeline)
EPOCHS ?=

.PHONY: test install browser quickstart

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

install: $(VENV)/.installed

# Debian's chromium + chromium-driver for the web demo's browser test.
browser:
	bash tests/setup_browser.sh

test: install browser
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS) tests

# The main job: toy world -> train the tiny model on CPU -> zero-shot classification and segmentation.
quickstart: install
	$(PY) tools/quickstart.py --minutes $(MINUTES) $(if $(EPOCHS),--epochs $(EPOCHS))
