# Set-up on a fresh Debian/Ubuntu machine: `make demo` or `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR := idc-demo
DEMO_STATE := .sandbox/state.json

.PHONY: demo demo-stop test test-unit test-torch test-desktop test-ray wheel-check lock lint bench bench-deps soak system-deps clean passthrough test-passthrough

system-deps:
	@if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 2>/dev/null || ! command -v getfattr >/dev/null \
		|| ! command -v systemd-analyze >/dev/null; then \
		echo "installing fuse3, libfuse3-dev, pkg-config, attr, systemd (for systemd-analyze)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq fuse3 libfuse3-dev pkg-config attr systemd >/dev/null; \
	fi

# The locked set (every package pinned, with hashes): what demo and test run on. The wheel check (.ci/wheel-check)
# tests the other set, the newest versions pyproject allows, as a plain `pip install idcfs` gets them.
LOCK := requirements.lock

$(VENV)/.installed: pyproject.toml $(LOCK) | system-deps
	rm -rf $(VENV) && python3 -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

# FUSE passthrough (Linux 6.9+, as root): libfuse 3.17 from Debian's source package and a patched pyfuse3, in
# $(VENV) only. The default build keeps Debian's libfuse 3.14 and serves every read from the daemon.
passthrough: $(VENV)/.installed
	@command -v dpkg-source >/dev/null && command -v patch >/dev/null || { echo "installing dpkg-dev, patch"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq dpkg-dev patch >/dev/null; }
	packaging/passthrough/build $(VENV)

# uv resolves for every Python and platform pyproject admits in one file (pip-compile resolves for the
# running interpreter only), and in seconds.
lock: $(VENV)/.installed
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --generate-hashes --upgrade \
		--custom-compile-command "make lock" -q -o $(LOCK)

demo: $(VENV)/.installed
	@mkdir -p .sandbox $(DEMO_DIR)
	@if [ -f .sandbox/sandbox.pid ] && kill -0 $$(cat .sandbox/sandbox.pid) 2>/dev/null; then :; else \
		rm -f $(DEMO_STATE); \
		nohup $(VENV)/bin/idcfs sandbox --dir .sandbox --state $(DEMO_STATE) > .sandbox/sandbox.out 2>&1 & echo $$! > .sandbox/sandbox.pid; \
		echo "starting the sandbox origin (first start generates ~320 MB of DICOM)"; \
		while [ ! -f $(DEMO_STATE) ]; do sleep 1; kill -0 $$(cat .sandbox/sandbox.pid) || { cat .sandbox/sandbox.out; exit 1; }; done; fi
	@mountpoint -q $(DEMO_DIR) || $(VENV)/bin/idcfs mount $(DEMO_DIR) --cache-dir .sandbox/cache \
		--manifest .sandbox/manifest.s5cmd \
		--s3-endpoint $$($(PY) -c "import json;print(json.load(open('$(DEMO_STATE)'))['s3_endpoint'])") \
		--gcs-endpoint $$($(PY) -c "import json;print(json.load(open('$(DEMO_STATE)'))['gcs_endpoint'])")
	@echo "== the tree at ./$(DEMO_DIR) (series level)"; find $(DEMO_DIR) -mindepth 4 -maxdepth 4 | sort
	@$(PY) -c "import pathlib, pydicom; f = sorted(pathlib.Path('$(DEMO_DIR)').rglob('*.dcm'))[0]; print('== header of', f); print(*str(pydicom.dcmread(f, stop_before_pixels=True)).splitlines()[:40], sep='\n')"
	@echo "== stop with: make demo-stop"

demo-stop:
	-$(VENV)/bin/idcfs unmount $(DEMO_DIR)
	-[ -f .sandbox/sandbox.pid ] && kill $$(cat .sandbox/sandbox.pid) && rm -f .sandbox/sandbox.pid

# The tiers in order, cheapest first: unit (no servers, no FUSE), engine (the sandbox origin), mount (FUSE).
test: $(VENV)/.installed
	$(VENV)/bin/ruff check idcfs tests bench
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/engine tests/mount

# Needs only the base install and pytest: make wheel-check runs it on the wheel at the lowest versions.
test-unit: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

# idcfs.torch and MONAI on a mount and idc:// (make test skips them without torch). Pinned: torch's CPU build
# (pip takes it from this machine's wheel directory; elsewhere PyPI's build), MONAI, and ITK for its ITKReader.
TORCH_PINS := torch==2.13.0 monai==1.6.1 itk-core==5.4.7 itk-io==5.4.7
test-torch: $(VENV)/.installed
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pytest -q -p no:cacheprovider tests/mount/test_torch.py

# Ray Data over idc:// and a mount on a local 2-CPU Ray cluster (make test skips it without Ray). Pinned.
RAY_PINS := ray[data]==2.60.0
test-ray: $(VENV)/.installed
	$(PY) -m pip install -q '$(RAY_PINS)'
	$(PY) -m pytest -q -p no:cacheprovider tests/engine/test_ray.py tests/mount/test_ray.py

# A person browsing: pcmanfm under Xvfb on readable mounts, screenshots checked (make test skips it without them).
test-desktop: $(VENV)/.installed
	@if ! command -v pcmanfm >/dev/null || ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null \
		|| ! command -v import >/dev/null; then \
		echo "installing pcmanfm, xvfb, xdotool, imagemagick"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
			pcmanfm xvfb xdotool imagemagick >/dev/null; \
	fi
	$(PY) -m pytest -q -p no:cacheprovider tests/mount/test_desktop.py

# The mount tests on the build of `make passthrough`, where the kernel reads cached instances itself.
test-passthrough: $(VENV)/.installed
	@$(PY) -c "import pyfuse3, sys; sys.exit(0 if hasattr(pyfuse3, 'backing_open') else 'run make passthrough first')"
	$(PY) -m pytest -q -p no:cacheprovider tests/mount/test_passthrough.py tests/mount/test_mount.py \
		tests/mount/test_cache.py tests/mount/test_faults.py tests/mount/test_background.py tests/unit/test_readpath.py

# idcfs as users install it: the wheel, no extras, the newest versions pyproject allows (pip), checked against
# the sandbox origin; then the lowest versions (uv, lowest-direct), which proves the lower bounds, tests/unit included.
wheel-check: $(VENV)/.installed
	$(PY) tests/wheel_check.py
	$(PY) tests/wheel_check.py --lowest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format idcfs tests bench
	$(VENV)/bin/ruff check --fix idcfs tests bench

bench-deps:
	@if ! command -v rclone >/dev/null || ! command -v s3fs >/dev/null; then \
		echo "installing the peers: rclone, s3fs"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq rclone s3fs >/dev/null; \
	fi

bench: $(VENV)/.installed bench-deps
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench

# Reliability under load, about 15 minutes: 10,000 reads at 10% faults, then 32 readers for 10 minutes.
soak: $(VENV)/.installed
	IDCFS_FAULT_READS=10000 $(PY) -m pytest -q -p no:cacheprovider -s tests/mount/test_faults.py -k ten_percent
	$(PY) -m bench.soak --minutes 10

clean: demo-stop
	rm -rf $(VENV) .sandbox
