# docmint build.  `make` builds build/docmint; `make test` runs the test
# suite; `make SAN=1 test` under ASan+UBSan; `make CUDA=1` adds the CUDA
# kernels (nvcc, cuBLAS, NCCL from $(CUDA_HOME)).
CC       ?= gcc
SAN      ?= 0
CUDA     ?= 0
CUDA_HOME ?= /usr/local/cuda
NVCC     ?= $(CUDA_HOME)/bin/nvcc

BUILD := build
ifeq ($(SAN),1)
BUILD := build-san
endif
ifeq ($(CUDA),1)
BUILD := $(BUILD)-cuda
endif

# Debian packages behind each pkg-config module (deploy/install-deps.sh
# installs them all).
PKGS := vips jansson cunit libutf8proc openblas libzmq lmdb libprotobuf-c
PKG_DEBS := libvips-dev libjansson-dev libcunit1-dev libutf8proc-dev libopenblas-dev \
            libzmq3-dev liblmdb-dev libprotobuf-c-dev protobuf-c-compiler libopenmpi-dev
PROTOC_C ?= protoc-c
ifeq ($(shell command -v $(PROTOC_C)),)
$(error protoc-c not found; run deploy/install-deps.sh (Debian package protobuf-c-compiler))
endif
# MPI through its compiler wrapper, never a hard-coded path.
MPI_CFLAGS := $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS := $(shell mpicc --showme:link 2>/dev/null)
ifeq ($(MPI_LIBS),)
$(error mpicc not found; run deploy/install-deps.sh (Debian packages libopenmpi-dev openmpi-bin))
endif

# oneDNN (the encoder's GEMMs) has no pkg-config module: probe its header.
DNNL_LIBS := -ldnnl
ifneq ($(shell echo '\#include <oneapi/dnnl/dnnl.h>' | $(CC) -E -x c - >/dev/null 2>&1 && echo y),y)
$(error oneDNN headers not found; run deploy/install-deps.sh (Debian package libdnnl-dev))
endif

MISSING := $(strip $(foreach p,$(PKGS),$(if $(shell pkg-config --exists $(p) && echo y),,$(p))))
ifneq ($(MISSING),)
$(error missing pkg-config modules: $(MISSING); run deploy/install-deps.sh (Debian packages: $(PKG_DEBS)))
endif

GEN := $(BUILD)/gen
# Includes name their path from the top ("worker/model/decoder.h"), so a
# file's include line says which layer it reaches into (tests/layering.sh).
INCS := -I. -I$(GEN)
OPT  := -O3 -march=native
CFLAGS += -std=gnu11 -g $(OPT) -Wall -Wextra -Wno-unused-parameter -Wno-sign-compare -Wno-format-truncation -Wno-missing-field-initializers \
          -fno-strict-aliasing -pthread -fopenmp $(INCS) $(shell pkg-config --cflags $(PKGS)) $(MPI_CFLAGS)
LDLIBS += $(shell pkg-config --libs $(PKGS)) $(DNNL_LIBS) $(MPI_LIBS) -fopenmp -lm -pthread

ifeq ($(SAN),1)
OPT := -O1 -march=native
CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

LIB_SRC := $(wildcard common/*.c kernels/*/*.c worker/*/*.c coordinator/*.c) \
           $(filter-out coordinator/cli/main.c,$(wildcard coordinator/cli/*.c))
PROTO := $(wildcard schemas/*.proto)
PROTO_C := $(PROTO:schemas/%.proto=$(GEN)/%.pb-c.c)
PROTO_H := $(PROTO_C:.c=.h)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o) $(PROTO_C:.c=.o) $(GEN)/schemas_embed.o
TEST_SRC := $(wildcard tests/*.c)
TEST_OBJ := $(TEST_SRC:%.c=$(BUILD)/%.o)

ifeq ($(CUDA),1)
CU_SRC := $(wildcard kernels/cuda/*.cu)
CU_OBJ := $(CU_SRC:%.cu=$(BUILD)/%.o)
LIB_OBJ += $(CU_OBJ)
CFLAGS += -DDM_CUDA=1 -I$(CUDA_HOME)/include
LDFLAGS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64
LDLIBS += -lcublas -lcudart -lnccl -lstdc++
# GPU code: SASS for each of CUDA_ARCHS (CUDA 13 supports sm_75 and newer:
# T4, A100, A10/RTX30, L4/RTX40, H100, B200, Thor, RTX50) plus PTX of
# CUDA_PTX, which the driver JIT-compiles for GPUs newer than the list.
# e.g. `make CUDA=1 CUDA_ARCHS=80` for a quick single-GPU build.
CUDA_ARCHS ?= 75 80 86 89 90 100 110 120
CUDA_PTX ?= 120
NVCC_GENCODE := $(foreach a,$(CUDA_ARCHS),-gencode arch=compute_$(a),code=sm_$(a)) \
                -gencode arch=compute_$(CUDA_PTX),code=compute_$(CUDA_PTX)
NVCCFLAGS ?= -O3 -g -lineinfo
NVCCFLAGS += -std=c++17 -Xcompiler -fPIC,-Wall,-Wextra,-Wno-unused-parameter $(INCS) -MMD -MP \
             $(NVCC_GENCODE)
# cuda_nccl.cu is host code only (no __global__): one target is enough and
# saves a device pass per architecture.  Drop this if it gains kernels.
$(BUILD)/kernels/cuda/cuda_nccl.o: NVCC_GENCODE := -gencode arch=compute_$(CUDA_PTX),code=compute_$(CUDA_PTX)
endif

.PHONY: all test demo reader bench clean deps python-schemas
# `make` also writes the Python modules of the record schemas (for
# schemas/python/dmstore.py) where protoc is installed.
PROTOC ?= protoc
PY_SCHEMAS := $(if $(shell command -v $(PROTOC) 2>/dev/null),python-schemas)
all: $(BUILD)/docmint $(PY_SCHEMAS)

$(BUILD)/docmint: $(BUILD)/coordinator/cli/main.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The version lives in one place, the file VERSION; `docmint --version` and
# `docmint --help` print it.
DOCMINT_VERSION := $(strip $(shell cat VERSION))
$(BUILD)/coordinator/cli/main.o: CFLAGS += -DDOCMINT_VERSION='"$(DOCMINT_VERSION)"'
$(BUILD)/coordinator/cli/main.o: VERSION

$(BUILD)/test_docmint: $(TEST_OBJ) $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Record and message code generated from schemas/*.proto.
$(GEN)/%.pb-c.c $(GEN)/%.pb-c.h: schemas/%.proto
	@mkdir -p $(GEN)
	$(PROTOC_C) --proto_path=schemas --c_out=$(GEN) $<

$(GEN)/%.pb-c.o: $(GEN)/%.pb-c.c
	$(CC) $(CFLAGS) -w -c -o $@ $<

# Keep the generated header: as an intermediate file make would delete it
# after each build, and every file including it would recompile next time.
.SECONDARY: $(PROTO_C) $(PROTO_H)

# Python modules of the same schemas (records_pb2.py), for
# schemas/python/dmstore.py; PY_GEN may point elsewhere (tests do).
PY_GEN ?= $(GEN)/python
python-schemas: $(PROTO:schemas/%.proto=$(PY_GEN)/%_pb2.py)

$(PY_GEN)/%_pb2.py: schemas/%.proto
	@mkdir -p $(PY_GEN)
	$(PROTOC) --proto_path=schemas --python_out=$(PY_GEN) $<

# schemas/*.json embedded in the binary (jsonschema_embedded).
SCHEMA_JSON := $(sort $(wildcard schemas/*.json))
$(GEN)/schemas_embed.c: $(SCHEMA_JSON) schemas/embed.sh
	@mkdir -p $(GEN)
	sh schemas/embed.sh $@ $(SCHEMA_JSON)

$(GEN)/schemas_embed.o: $(GEN)/schemas_embed.c common/jsonschema.h
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.o: %.c | $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

# The unit and golden tests (CUnit), then the command-line tests.  A part
# still running after TEST_LIMIT seconds is stopped and fails (a hang is
# a failure with a name, not a run that never ends).
# fast_unwind_on_malloc=0: the full stack of each allocation, so that the
# suppressions match allocations made inside Open MPI's plugins, whose
# frames the fast unwinder does not walk (it stops at "<unknown module>").
export LSAN_OPTIONS := suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0:fast_unwind_on_malloc=0
TEST_LIMIT ?= 1800
test: $(BUILD)/test_docmint $(BUILD)/docmint $(BUILD)/rogue_worker $(PY_SCHEMAS)
	sh tests/layering.sh
	sh tests/docs.sh
	cd tests && DOCMINT=../$(BUILD)/docmint timeout -k 10 $(TEST_LIMIT) ../$(BUILD)/test_docmint
	DOCMINT=$(BUILD)/docmint timeout -k 10 $(TEST_LIMIT) sh tests/cli.sh
	DOCMINT=$(BUILD)/docmint sh tests/mpi/all.sh

# A worker with the job's keys that forges, floods and hoards
# (tests/mpi/rogue_worker.sh finds it next to docmint).
$(BUILD)/rogue_worker: $(BUILD)/tests/tools/rogue_worker.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# Build a random-weight model of the tiny config, synthesise a page and ask
# it a question (no download needed).
demo: $(BUILD)/docmint $(PY_SCHEMAS)
	sh jobs/demo.sh $(BUILD)/docmint

# The reader shipped in models/reader, trained again from random weights
# on synthetic pages (jobs/reader.sh; its time here is in
# models/reader/README.md).  Resumable: a rerun goes on where it stopped.
reader: $(BUILD)/docmint $(PY_SCHEMAS)
	sh jobs/reader.sh $(BUILD)/docmint

bench: $(BUILD)/docmint $(BUILD)/gemm_bench $(BUILD)/enc_bench $(BUILD)/dec_bench
	sh tests/bench.sh $(BUILD)/docmint $(BUILD)/gemm_bench $(BUILD)/enc_bench $(BUILD)/dec_bench

# GEMM libraries compared on the encoder's shapes (tests/bench/gemm_bench.c):
# libxsmm linked (static), BLIS loaded at run time.
XSMM_LIBS := $(shell pkg-config --libs libxsmmnoblas 2>/dev/null)
$(BUILD)/gemm_bench: $(BUILD)/tests/bench/gemm_bench.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(XSMM_LIBS) $(LDLIBS) -ldl

# The encoder alone, float32 and bf16, against its bounds.
$(BUILD)/enc_bench: $(BUILD)/tests/bench/enc_bench.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The decoder alone, one measurement per run (for profilers).
$(BUILD)/dec_bench: $(BUILD)/tests/bench/dec_bench.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

deps:
	sh deploy/install-deps.sh

# The key lists of docs/jobs.md, docs/pruning.md and docs/compare.md,
# rendered from schemas/job.schema.json, plan.schema.json and
# compare.schema.json; `make test` fails
# when they are out of date (tests/docs.sh).
.PHONY: docs
docs:
	sh tests/docs.sh --write

clean:
	rm -rf build build-san build-cuda build-san-cuda

-include $(LIB_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(BUILD)/coordinator/cli/main.d $(BUILD)/tests/tools/rogue_worker.d
