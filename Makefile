# The course's commands. `make run` and `make test` set everything up on a fresh machine
# (Python 3.10+ and pip; no conda needed). Each target calls `python -m course_lib <target>`
# (course_lib/cli.py), which is what learners without make (Windows) run directly.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export COURSE_PROGRESS ?= 0
export PYTHONHASHSEED = 0
# Empty: setup decides (course_lib/cli.py torch_source): a local torch wheel if pip finds one, else PyTorch's
# CPU-only index on Linux without an NVIDIA GPU, else pip's default index; COURSE_TORCH=cpu|cuda|default overrides.
# An explicit index wins: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# make wheelhouse downloads every wheel here once; make install-offline installs from it with no network
WHEELHOUSE ?= build/wheelhouse
# the students' Python for the wheelhouse (the oldest they have, e.g. 3.11.2); empty: .venv's own
WHEELHOUSE_PYTHON ?=

.PHONY: setup run test test-classroom unit nbval lab notebooks sync handouts results student bench clean help timings nbgrader wheelhouse install-offline

help:
	@echo "make setup     .venv with the locked torch (local wheel, else CPU-only on GPU-less Linux) and the dev extras"
	@echo "make run       set up .venv, execute every notebook, write build/handouts/ and build/results.md"
	@echo "make test      set up .venv with dev extras; unit tests, nbgrader grading of every chapter, nbval over notebooks/ (two jobs at a time: COURSE_TEST_JOBS)"
	@echo "make unit      the unit tests alone, without the nbgrader grading (quick)"
	@echo "make test-classroom  nbgrader end to end (as in make test) and the offline install from a wheelhouse (network)"
	@echo "make lab       open JupyterLab on notebooks/"
	@echo "make notebooks re-execute notebooks/ in place (maintainers: refreshes committed outputs)"
	@echo "make sync      update notebooks/*.ipynb from their sources notebooks/src/*.py, keeping outputs"
	@echo "make handouts  offline HTML handouts in build/handouts/ (from the last run, else the committed notebooks)"
	@echo "make bench     benchmark table (ratios vs baseline, single thread)"
	@echo "make timings   time every chapter, full and lab mode, and write docs/timings.md"
	@echo "make nbgrader  nbgrader course directory in build/nbgrader/ (see docs/instructor.md)"
	@echo "make wheelhouse      every wheel the course needs in $(WHEELHOUSE) (honours TORCH_INDEX), for offline installs"
	@echo "make install-offline WHEELHOUSE=DIR  set up .venv from a wheelhouse, with no network"
	@echo "make clean     remove build/ (and the baseline cache in it)"

$(PY):
	$(PYTHON) -m venv $(VENV)

# .venv, the locked torch, then the course with its dev extras, all under constraints.txt
SETUP = $(PYTHON) -m course_lib setup $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX))
$(STAMP): pyproject.toml $(wildcard constraints.txt)
	$(SETUP)

setup:
	$(SETUP)

run: $(STAMP)
	$(PY) -m course_lib run

test: $(STAMP)
	$(PY) -m course_lib test

# The classroom checks alone: nbgrader end to end on every chapter in lab mode, the solved copies graded whole
# (make test grades them cut to their exercises), and a
# wheelhouse built for real (network, ~500 MB) and resolved and installed from in a fresh venv with no network
test-classroom: $(STAMP)
	COURSE_TEST_WHEELHOUSE=1 COURSE_NBGRADER_FULL_SOLVED=1 $(PY) -m pytest -q tests/test_nbgrader.py tests/test_student.py tests/test_wheelhouse.py

# the unit tests without the nbgrader grading of every chapter (minutes): a quick check while editing
unit: $(STAMP)
	$(PY) -m course_lib unit

nbval: $(STAMP)
	$(PY) -m course_lib nbval

lab: $(STAMP)
	$(PY) -m course_lib lab

notebooks: $(STAMP)
	$(PY) -m course_lib notebooks

# The sources notebooks/src/NN_x.py (jupytext percent format, cell tags and nbgrader metadata included) are
# what maintainers edit; notebooks/jupytext.toml pairs them with notebooks/NN_x.ipynb, so JupyterLab saves
# both. This brings each .ipynb up to date with its source after an edit outside JupyterLab: inputs and tags
# come from the .py, outputs and execution metadata stay as committed (run `make notebooks` if code changed);
# a new chapter's source gets a new notebook. `scripts/sync_notebooks.py --check` changes nothing.
sync: $(STAMP)
	$(PY) -m course_lib sync

# handouts of the last `make run`, or of the committed notebooks (they hold their outputs) before any run
handouts: $(STAMP)
	$(PY) -m course_lib handouts

results: $(STAMP)
	$(PY) -m course_lib results

bench: $(STAMP)
	$(PY) -m course_lib bench

clean:
	rm -rf build

student: $(STAMP)
	$(PY) -m course_lib student

# measured run times of every chapter (full and lab mode) -> docs/timings.md, generated, never typed
timings: $(STAMP)
	$(PY) -m course_lib timings

# nbgrader course directory; run nbgrader there with .venv/bin on PATH (it calls alembic)
nbgrader: $(STAMP)
	$(PY) -m course_lib nbgrader

# Classroom installs with no network (docs/instructor.md): the instructor runs `make wheelhouse` once, on the
# students' operating system and Python version, and hands out $(WHEELHOUSE); students run
# `make install-offline WHEELHOUSE=<that folder>` in their copy of the course.
wheelhouse: | $(PY)
	$(PY) scripts/wheelhouse.py --out $(WHEELHOUSE) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX)) \
		$(if $(WHEELHOUSE_PYTHON),--python-version $(WHEELHOUSE_PYTHON))

install-offline: | $(PY)
	$(PY) -m pip install --no-index --find-links $(WHEELHOUSE) --upgrade pip
	$(PY) -m pip install --no-index --find-links $(WHEELHOUSE) "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)
