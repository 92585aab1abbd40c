# The README's two commands: `make demo` and `make test`. Everything else is a building block.
.PHONY: setup test lint demo

setup:
	bash hack/setup.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: setup lint
	.venv/bin/pytest

demo: setup
	.venv/bin/python -m hack.demo
