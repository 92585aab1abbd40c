# The README's two commands: `make demo` and `make test`. Everything else is a building block.
.PHONY: setup test test-unit lint demo

setup:
	bash hack/setup.sh

# Style, types and layers: ruff (complexity included), mypy (pyproject.toml), import-linter's contracts.
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	.venv/bin/lint-imports

# Two sessions: most tests share one cluster; the own_cluster tests (the demo, node clean-up) start and
# stop their own, and one node per machine means the shared one must be gone first.
test: setup lint
	.venv/bin/pytest -m "not own_cluster" --durations=15
	.venv/bin/pytest -m own_cluster --durations=15

# The tests that start no server and train no model, on an existing .venv (no set-up): under a minute.
test-unit:
	@test -x .venv/bin/pytest || { echo "no .venv: run make setup once"; exit 1; }
	.venv/bin/pytest -m unit -q

demo: setup
	.venv/bin/python -m hack.demo
