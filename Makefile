# The two commands a new user needs:   make study   (the main job)   and   make test   (the test suite).
# Both set up .venv first (scripts/setup.sh; idempotent). GPU users: install your torch into .venv first,
# or set TORCH_SPEC, e.g. `make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" test`.
# Optional built-in encoders (not needed by study, quick or test): `make setup ENCODERS=qwen2.5-1.5b` (1.1 GB).
PY := .venv/bin/python
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup study quick test lint lab clean-notebooks

setup:
	@ENCODERS="$(ENCODERS)" bash scripts/setup.sh

study: setup  ## the small study on cpu-latent-v (grids/small2.yaml) end to end (~10 h on 2 CPU cores; resumable)
	$(PY) -m t2istudy study

quick: setup  ## a few-minute smoke run of the whole study that still writes every figure and table
	$(PY) -m t2istudy study --quick

test: setup  ## lint + the test suite
	.venv/bin/ruff check t2istudy tests benchmarks notebooks
	$(PY) -m pytest -q

lint: setup  ## ruff, and the import rule between the layers (import-linter contracts in pyproject.toml)
	.venv/bin/ruff check t2istudy tests benchmarks notebooks
	.venv/bin/ruff format --check t2istudy tests benchmarks
	.venv/bin/lint-imports

lab: setup  ## JupyterLab on the notebooks
	.venv/bin/jupyter lab notebooks/
