# Set-up and entry points. `make demo` and `make test` install what they need themselves.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

# On a Raspberry Pi, picamera2 comes from Raspberry Pi OS (apt install python3-picamera2),
# so the virtual environment must see the system site-packages.
IS_PI := $(shell grep -qs 'Raspberry Pi' /proc/device-tree/model && echo yes)
VENV_FLAGS := $(if $(IS_PI),--system-site-packages,)

.PHONY: help demo test install-edge install-aggregator install-all mosquitto clean

help:
	@echo "make demo                run the whole pipeline on the bundled video and print the lecture report"
	@echo "make test                run the test suite (installs everything, including the trainer)"
	@echo "make install-edge        virtual environment for a classroom Pi (edge agent only)"
	@echo "make install-aggregator  virtual environment for the aggregator server"
	@echo "make default-model       rebuild edge_agent/models/ from the Keras weights (trainer)"

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV_FLAGS) $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV_FLAGS) $(VENV); \
	  else \
	    echo "Cannot create a virtual environment. Run: sudo apt-get install -y python3-venv" >&2; exit 1; \
	  fi; }
	@$(PIP) install -q --upgrade pip

$(VENV)/.installed-edge: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[edge]"
	@touch $@

$(VENV)/.installed-aggregator: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[aggregator]"
	@touch $@

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[edge,aggregator]"
	@touch $@

$(VENV)/.installed-all: pyproject.toml | $(BIN)/python
	$(PIP) install -q -e ".[edge,aggregator,postgres,trainer,dev]"
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

demo: $(VENV)/.installed-demo mosquitto
	$(BIN)/python demo/run_demo.py

test: $(VENV)/.installed-all mosquitto
	$(BIN)/python -m pytest

default-model: $(VENV)/.installed-all
	$(BIN)/trainer export-default

clean:
	rm -rf $(VENV) .demo .pytest_cache
