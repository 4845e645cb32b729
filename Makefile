# gres-oci: build, demo and test entry points. Everything runs as root (mknod, mounts, runc,
# Slurm daemons); `deps` installs the Debian packages first and is cheap when they are there.
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: deps build release demo test check fmt clippy install deb

# Install layout (FHS). The plugin goes where the installed Slurm keeps its plugins.
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
PROFILE ?= release
SLURM_PLUGIN_DIR ?= $(shell scripts/slurm-plugin-dir)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
TARGET_DIR := target/$(PROFILE)

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
	$(CARGO) test --workspace --no-fail-fast

check: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The hook, the plugin, the configs and the hooks.d files, into $(DESTDIR)$(PREFIX) and
# $(DESTDIR)$(SYSCONFDIR). An existing config.toml is kept.
install:
	test -x $(TARGET_DIR)/gres-oci-hook || $(CARGO) build --workspace $(if $(filter release,$(PROFILE)),--release,)
	install -D -m 755 $(TARGET_DIR)/gres-oci-hook $(DESTDIR)$(PREFIX)/bin/gres-oci-hook
	install -D -m 755 $(TARGET_DIR)/libgres_oci_spank.so $(DESTDIR)$(SLURM_PLUGIN_DIR)/gres-oci.so
	test -e $(DESTDIR)$(SYSCONFDIR)/gres-oci/config.toml || \
	  install -D -m 644 slurm-conf/config.toml $(DESTDIR)$(SYSCONFDIR)/gres-oci/config.toml
	install -D -m 644 slurm-conf/hooks.d/gres-oci.json $(DESTDIR)$(PREFIX)/share/gres-oci/hooks.d/gres-oci.json
	install -D -m 644 slurm-conf/hooks.d/gres-oci-podman.json $(DESTDIR)$(PREFIX)/share/gres-oci/hooks.d/gres-oci-podman.json
	sed -i 's|/usr/bin/gres-oci-hook|$(PREFIX)/bin/gres-oci-hook|' $(DESTDIR)$(PREFIX)/share/gres-oci/hooks.d/*.json
	install -D -m 644 slurm-conf/plugstack.conf.d/gres-oci.conf $(DESTDIR)$(PREFIX)/share/gres-oci/plugstack.conf.d/gres-oci.conf
	install -D -m 644 README.md $(DESTDIR)$(PREFIX)/share/doc/gres-oci/README.md

# A Debian package of the build, in target/: `apt install ./target/gres-oci_*.deb`.
deb:
	rm -rf target/deb-root
	$(MAKE) install DESTDIR=$(CURDIR)/target/deb-root PREFIX=/usr SLURM_PLUGIN_DIR=$(SLURM_PLUGIN_DIR)
	scripts/deb-control $(VERSION) target/deb-root
	dpkg-deb --root-owner-group --build target/deb-root target/gres-oci_$(VERSION)_$$(dpkg --print-architecture).deb
