# Verbs everyone shares. The venv lives in .venv; `make develop` first.
PY ?= .venv/bin/python

.PHONY: develop debug test test-py testinstalled bench report clean

develop:            ## editable install with the compiled core and test extras
	python3 -m venv .venv && $(PY) -m pip install -q -e '.[test]'

debug:              ## editable debug build (-O0 -g3, line tracing, annotated HTML)
	NVSENTINEL_DEBUG_BUILD=1 $(PY) -m pip install -q -e '.[test]'

test:               ## the full suite against both implementations
	.venv/bin/pytest -q

test-py:            ## the suite with the pure-Python twins forced
	NVSENTINEL_NO_EXTENSIONS=1 .venv/bin/pytest -q --no-c-extensions

testinstalled:      ## build a wheel, install it in a clean venv, run the tests from outside the tree
	rm -rf dist /tmp/nvsentinel-wheel-venv && $(PY) -m pip wheel -q --no-deps -w dist .
	python3 -m venv /tmp/nvsentinel-wheel-venv
	/tmp/nvsentinel-wheel-venv/bin/pip install -q dist/nvsentinel-*.whl 'pytest>=8' 'hypothesis>=6.100' 'pytest-benchmark>=5' 'kubernetes-validate>=1.37' grpcio-tools
	cd /tmp && /tmp/nvsentinel-wheel-venv/bin/pytest -q -p no:cacheprovider --rootdir=$(CURDIR) $(CURDIR)/tests

bench:              ## pytest-benchmark suites, saved under .benchmarks/
	bench/run

report:             ## ratio tables from the saved benchmark JSON
	$(PY) bench/report.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis nvsentinel/*.so nvsentinel/devtools/_fake_nvml csrc/_*_c.c csrc/*.html
