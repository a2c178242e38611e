# The two commands (see README):
#   make reproduce   the notebook pipeline in the default profile (auto: paper on CUDA, else cpu)
#   make test        pytest + nbval on the notebooks under the smoke profile (what CI runs)
#   make dryrun      the whole chain of PROFILE at its shapes, a few steps per stage (data/<profile>-dryrun/)
# Both create .venv from requirements.lock if it is missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PROFILE ?= auto
STAMP  := $(VENV)/.tficlib-installed

.PHONY: reproduce dryrun test venv lint lock clean-data

venv: $(STAMP)

# requirements.lock is the complete, pinned closure (pip freeze of a working
# environment), so it is installed with --no-deps: this is also how trdg 1.8 gets
# in without its python-bidi==0.4.2 pin (EasyOCR needs >= 0.5).
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip==26.3"
	$(PIP) install --quiet --no-deps -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PY) -c "import tficlib.compat; tficlib.compat.check_environment()"
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m tficlib run --profile $(PROFILE)

dryrun: $(STAMP)
	$(PY) -m tficlib run --profile $(PROFILE) --dry-run

test: $(STAMP)
	TFIC_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider tests
	TFIC_PROFILE=smoke MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env notebooks

lint: $(STAMP)
	$(PY) -m ruff check tficlib tests

# Regenerate requirements.lock from the current .venv (after changing pyproject.toml).
lock: $(STAMP)
	$(PIP) freeze --all --exclude-editable | grep -vE "^(-e|pip==|tficlib)" > requirements.lock.tmp && mv requirements.lock.tmp requirements.lock

clean-data:
	rm -rf data/smoke
