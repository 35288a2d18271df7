# The two set-up commands of README.md: `make run` and `make test`.
# Each creates its own virtualenv in .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench bench-abuse clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

# Never served as root: run as root, it binds, gives ./var to nobody and drops to it.
run: $(BIN)/.installed
	$(BIN)/twistd -n --pidfile= $(if $(filter 0,$(shell id -u)),--uid=nobody) mailgateway

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/smtp_accept.py

# Issue 11's attacks, each against a real gateway while a good client works.
bench-abuse: $(BIN)/.installed
	$(BIN)/python bench/abuse.py

clean:
	rm -rf $(VENV) var
