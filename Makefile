# gres-oci: build, demo and test entry points. Everything runs as root (mknod, mounts, runc,
# Slurm daemons); `deps` installs the Debian packages first and is cheap when they are there.
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build release demo test check fmt clippy install

deps:
	./.ci/install-deps

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --workspace --release

# The main job: fake GPUs and driver, a real runc container through the real hook.
demo: build
	bash scripts/demo.sh

# Every test: unit tests, then the end-to-end tests with real runc, crun and Slurm.
test: build check
	$(CARGO) test --workspace

check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
