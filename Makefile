# Set-up and entry points. `make demo` and `make test` install what they need themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# constraints.txt pins every package to the versions the test suite passed with. Without it
# pip backtracks through the trainer's deep dependency tree for many minutes.
INSTALL := $(PIP) install -q -c constraints.txt

# On a Raspberry Pi, picamera2 comes from Raspberry Pi OS (apt install python3-picamera2),
# so the virtual environment must see the system site-packages.
IS_PI := $(shell grep -qs 'Raspberry Pi' /proc/device-tree/model && echo yes)
VENV_FLAGS := $(if $(IS_PI),--system-site-packages,)

.PHONY: help demo test install-edge install-aggregator install-all mosquitto chromium default-model constraints bench bench-peers clean

help:
	@echo "make demo                run the whole pipeline on the bundled video and print the lecture report"
	@echo "make test                run the test suite (installs everything, including the trainer)"
	@echo "make install-edge        virtual environment for a classroom Pi (edge agent only)"
	@echo "make install-aggregator  virtual environment for the aggregator server"
	@echo "make install-all         virtual environment with every part, the trainer and the test tools"
	@echo "make default-model       rebuild edge_agent/models/ from the Keras weights (trainer)"
	@echo "make bench               run the benchmark suite and write docs/benchmarks/suite.md (about 5 minutes)"
	@echo "make bench-peers         install the fer package in .venv-peers (about 3 GB) and compare it on that page"
	@echo "make constraints         rewrite constraints.txt from the packages in $(VENV)"
	@echo "make clean               remove the virtual environment and the demo's files"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV_FLAGS) $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV_FLAGS) $(VENV); \
	  else \
	    echo "Cannot create a virtual environment. Run: sudo apt-get install -y python3-venv" >&2; exit 1; \
	  fi; }
	@$(PIP) install -q --upgrade pip

$(VENV)/.installed-edge: pyproject.toml constraints.txt | $(BIN)/python
	@echo "Installing the edge agent into $(VENV)"
	$(INSTALL) -e ".[edge]"
	@touch $@

$(VENV)/.installed-aggregator: pyproject.toml constraints.txt | $(BIN)/python
	@echo "Installing the aggregator into $(VENV)"
	$(INSTALL) -e ".[aggregator,postgres]"
	@touch $@

$(VENV)/.installed-demo: pyproject.toml constraints.txt | $(BIN)/python
	@echo "Installing the edge agent and the aggregator into $(VENV) (about a minute)"
	$(INSTALL) -e ".[edge,aggregator]"
	@touch $@

$(VENV)/.installed-all: pyproject.toml constraints.txt | $(BIN)/python
	@echo "Installing all parts, the trainer's PyTorch included, into $(VENV) (several minutes)"
	$(INSTALL) -e ".[edge,aggregator,postgres,trainer,deploy,dev]"
	@touch $@

install-edge: $(VENV)/.installed-edge
install-aggregator: $(VENV)/.installed-aggregator
install-all: $(VENV)/.installed-all

# The demo and the tests start private brokers, so only the mosquitto binary is needed.
mosquitto:
	@command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q mosquitto; \
	  else \
	    echo "The mosquitto broker is missing. Run: sudo apt-get install -y mosquitto" >&2; exit 1; \
	  fi; }

# The HTML report test renders the page in a real headless Chromium.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "Chromium is missing (the HTML report test needs it). Run: sudo apt-get install -y chromium" >&2; exit 1; \
	  fi; }

demo: $(VENV)/.installed-demo mosquitto
	$(BIN)/python demo/run_demo.py

test: $(VENV)/.installed-all mosquitto chromium
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-all mosquitto
	$(BIN)/python bench/suite.py

bench-peers: $(VENV)/.installed-all
	$(BIN)/python bench/peers_fer.py

default-model: $(VENV)/.installed-all
	$(BIN)/trainer export-default

constraints: $(VENV)/.installed-all
	@{ echo "# Versions the test suite passed with, used as pip constraints by the Makefile so that"; \
	  echo "# installs resolve quickly and reproducibly. Regenerate with: make constraints"; \
	  $(PIP) freeze --exclude-editable | grep -v '^classroom-emotion-stats' \
	    | grep -viE '^(nvidia|cuda|triton)' | sed -E 's/^torch==([0-9.]+)\+.*/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .venv-peers .demo .pytest_cache
