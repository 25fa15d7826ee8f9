# moatwatch: two commands on a fresh machine.
#   make demo   installs, starts the local Kafka and a worker, sends simulated traffic, shows alerts
#   make test   installs, starts the local Kafka (and real Prometheus/Alertmanager in tests), runs pytest
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
KAFKA  := infra/kafka/local-kafka
PYTEST_ARGS ?=

.PHONY: install system-deps demo test test-unit lint bench kafka-start kafka-stop clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

# Real Prometheus and Alertmanager for the observability tests (Debian packages; not started here).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
	    || ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then \
	  echo "installing prometheus and prometheus-alertmanager (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager >/dev/null; \
	fi
	@command -v java >/dev/null || { echo "Java 17 is required for the local Kafka (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch Kafka (apt-get install maven)"; exit 1; }

kafka-start: install
	@$(KAFKA) start

kafka-stop:
	@$(KAFKA) stop

demo: install
	$(BIN)/moatwatch demo

# Starts the broker if it is not running and stops it afterwards only if this run started it.
test: install system-deps
	@started=0; \
	if ! $(KAFKA) status >/dev/null 2>&1; then $(KAFKA) start >/dev/null && started=1; fi; \
	MOATWATCH_BOOTSTRAP=$$($(KAFKA) status | head -n1) $(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$started = 1 ]; then $(KAFKA) stop; fi; \
	exit $$rc

test-unit: install
	$(BIN)/pytest tests/unit schemas models streams $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check streams models schemas tests

bench: install
	$(BIN)/moatwatch bench

clean:
	rm -rf $(VENV) .local *.egg-info .pytest_cache .hypothesis
