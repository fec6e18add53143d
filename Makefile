# Two commands for a newcomer: `make deploy` and `make test`. The rest are their parts.
VENV ?= .venv
PYTHON ?= python3
INVENTORY ?= inventories/local/hosts.yml
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)

.PHONY: setup deploy check test lint unit integration molecule bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "python3 is needed (apt-get install python3 python3-venv)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

## Deploy the whole stack (site.yml) to the inventory (default: this machine).
deploy: setup
	$(VENV)/bin/ansible-playbook -i $(INVENTORY) site.yml $(ARGS)

## Dry run: what deploy would change.
check: setup
	$(VENV)/bin/ansible-playbook -i $(INVENTORY) site.yml --check --diff $(ARGS)

## Everything CI runs: Docker engine + test images, lint, unit, every Molecule scenario.
test: setup
	tests/run.sh all

lint: setup
	tests/run.sh lint

unit: setup
	tests/run.sh unit

## Integration tests against real Dify (api + worker from upstream source; tests/real_dify).
integration: setup
	tests/run.sh integration

## make molecule S="docker nvidia"
molecule: setup
	tests/run.sh molecule $(S)

## Benchmarks print figures (they are not tests): site converge/re-run, embedding batching,
## ingesting a repository into real Dify (defaults vs tuned). BENCH_ARGS=--quick for a short ingest.
bench: setup
	scripts/ensure-test-tools.sh
	scripts/ensure-docker.sh
	$(VENV)/bin/python benchmarks/site_converge.py
	$(VENV)/bin/python benchmarks/embedding_batch.py
	$(VENV)/bin/python benchmarks/ingest.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .cache
