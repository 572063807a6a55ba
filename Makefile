# contend: the two commands a user types are `make lab` and `make test`.
# `make install` is idempotent: it rebuilds the venv only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the project uses when present (bpftrace: the eBPF backend; chromium:
# the tests open the HTML report in it; podman, runc, debootstrap: the container image
# without a registry; docker.io: a real Docker daemon beside podman, which the tests start
# on a private socket; qemu-system-x86, busybox-static: `make vmtest`'s VM).
# prometheus: promtool and a real server for the exporter's tests; tmux: top's tests run
# it in a real terminal; htop: top's bench.
# docker.io conflicts with podman-docker over /usr/bin/docker: the real Docker wins.
DEB_PACKAGES := bpftrace chromium podman runc debootstrap docker.io qemu-system-x86 busybox-static \
  prometheus htop tmux

.PHONY: install lab test lint typecheck pytest clean deb image vmtest test-loaded

install: deb $(STAMP)

# As root, install missing Debian packages; as a user, say what is missing and go on
# (the procfs backend needs none of them).
deb:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get install -y -q --no-install-recommends $$missing >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null)) \
	     || { echo "warning: could not install$$missing (contend works without them)"; }; \
	  else \
	    echo "note: missing Debian packages:$$missing (run 'make install' as root to add them)"; \
	  fi; \
	fi
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v qemu-system-x86_64 >/dev/null; then \
	  $(PYTHON) tools/vmtest.py fetch >/dev/null || echo "warning: no kernel for make vmtest"; \
	fi

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "contend needs Python >= 3.11 (PYTHON=$(PYTHON))"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

lab: install
	$(BIN)/contend lab $(LAB_ARGS)

# The original document's image dtrace-cpu-contention (podman or docker, whichever
# answers; a local debootstrap base, no registry). Idempotent: a second run reuses it.
image: install
	$(BIN)/contend image build $(IMAGE_ARGS)

lint: install
	$(BIN)/ruff check src tests tools $(wildcard bench)
	$(BIN)/ruff format --check src tests tools $(wildcard bench)

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The timing-sensitive kernel tests (marked `timing`) again, with a busy loop on the last
# CPU beside them: they must hold on a machine that is doing something else too.
test-loaded: install
	$(PYTHON) tools/busy_neighbour.py -- \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -rfE -m timing $(PYTEST_ARGS)

# The kernel tests again in a VM: Debian's own kernel, pure cgroup v2 laid out as systemd
# does, tracefs unmounted at boot (tools/vmtest.py). TCG, so a chosen subset.
VM_TESTS ?= tests/test_sandbox.py tests/test_procfs_kernel.py tests/test_breakdown.py \
  tests/test_diagnose.py \
  tests/test_trace.py::test_two_pinned_busy_loops_share_one_cpu \
  tests/test_tracefs_trace.py::test_a_throttled_loop_runs_what_its_quota_allows \
  tests/test_tracefs_trace.py::test_nothing_left_in_tracefs_however_it_stops \
  tests/test_tracefs_trace.py::test_kill_int_from_a_script_stops_record_and_diagnose_cleanly \
  tests/test_tracefs_breakdown.py::test_a_loop_sharing_a_cpu_waits_behind_the_other \
  tests/test_container.py::test_trace_cpu_sees_the_noise_push_the_app_off_the_cpu \
  tests/test_container.py::test_diagnose_names_the_noise_and_the_quota \
  tests/test_container.py::test_record_a_container_then_report_it \
  tests/test_container.py::test_unknown_container_is_a_usage_error \
  "tests/test_exporter.py::test_a_quota_and_a_pinned_pair_against_the_kernels_counters[procfs]" \
  tests/test_exporter.py::test_a_real_scrape_passes_promtool_and_serves_only_its_paths
# Not in the VM (they run on the host, loaded and not): both backends at once on two
# loops, which stalled the VM's RCU once; the exporter's bpftrace variant, under whose
# probes TCG's loops could not use their 0.5-CPU quota (throttled in 41 of 49 periods).
# podman in the VM: the host's images loaded into a tmpfs store, containers on the host's
# network (no bridge module in the VM).
vmtest: install
	$(BIN)/contend image build --engine podman
	CONTEND_TEST_HOST_NETWORK=1 CONTEND_TEST_TIME_SCALE=5 $(PYTHON) tools/vmtest.py run --timeout 1200 \
	  --podman-image localhost/dtrace-cpu-contention:latest --podman-image localhost/contend-base:latest -- \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -rfE --durations=10 $(VM_TESTS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
