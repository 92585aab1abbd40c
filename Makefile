# The README's two commands: `make demo` and `make test`. Everything else is a building block.
.PHONY: setup test lint demo

setup:
	bash hack/setup.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# Two sessions: most tests share one cluster; the own_cluster tests (the demo, node clean-up) start and
# stop their own, and one node per machine means the shared one must be gone first.
test: setup lint
	.venv/bin/pytest -m "not own_cluster"
	.venv/bin/pytest -m own_cluster

demo: setup
	.venv/bin/python -m hack.demo
