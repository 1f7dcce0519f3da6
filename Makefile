# handoff — two commands matter: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TEST_WORKERS ?= 2  # pytest-xdist processes, whole test modules each, sharing one broker
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# `make demo CONSOLE=1` keeps the demo's console (and its broker) up until Ctrl-C
CONSOLE ?=

.PHONY: install demo test bench kafka-up kafka-down topics clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "handoff needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

kafka-up: install
	$(BIN)/handoff kafka up

kafka-down: install
	$(BIN)/handoff kafka down

topics: kafka-up
	$(BIN)/handoff topics apply --workflow support_ticket

demo: install
	HANDOFF_DEMO_CONSOLE=$(CONSOLE) $(BIN)/python -m processors.dev.demo

test: install
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; }  # the view tests start their own server
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }  # the console tests drive it headless (Playwright, no browser download)
		$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: install
	@$(BIN)/python -c 'import quixstreams' 2>/dev/null || $(BIN)/pip install --quiet --no-deps $$($(BIN)/python -c \
	  'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))')
	$(BIN)/python -m processors.dev.bench

clean:
	-$(BIN)/handoff kafka down
	rm -rf $(VENV) .local
