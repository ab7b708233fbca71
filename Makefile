# Two entry points for people: `make run` (set up, then serve the app on the
# shipped model) and `make test` (set up, then run the whole test suite).
VENV ?= .venv
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: setup run test test-fast reliability-report browser pacs clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	touch $@

run: setup
	$(VENV)/bin/pneumo serve --host $(HOST) --port $(PORT)

# The browser tests drive Debian's chromium; they skip with a reason without it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found: browser tests will be skipped (sudo apt-get install chromium)"; fi; }

# The DICOM integration tests run a real PACS: Debian's Orthanc with its DICOMweb plugin,
# started by the tests on loopback ports; they skip with a reason without it.
pacs:
	@command -v Orthanc >/dev/null 2>&1 && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's Orthanc for the DICOM integration tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null; \
	  else echo "Orthanc not found: PACS tests will be skipped (sudo apt-get install orthanc orthanc-dicomweb)"; fi; }

test: setup browser pacs
	$(VENV)/bin/python -m pytest

# Everyday work: everything but the tests marked slow (training, the real Xception, real
# servers, the real benchmark) and the browser tests.
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow and not browser"

# The whole suite, then docs/reliability.md refreshed from it (only if every row passed).
reliability-report: setup browser pacs
	PNEUMO_REFRESH_REPORT=1 $(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
