# edgekit: `make demo` and `make test` are the whole set-up on a fresh machine.
VENV    ?= .venv
PY      := $(VENV)/bin/python
EDGEKIT := $(VENV)/bin/edgekit
SHARED  ?= ../shared
export EDGEKIT_DATA    ?= $(abspath $(SHARED)/data)
export EDGEKIT_WEIGHTS ?= $(abspath $(SHARED)/weights)

MODEL   ?= examples/conv_attention.py:build
TARGET  ?= host
BACKEND ?= tvm
OUT     ?= out
# Debian packages: cross compiler + QEMU + debootstrap (aarch64 targets and emulator), espeak-ng + flite (Samba-ASR TTS data, tested), PortAudio + a user-space
# PulseAudio (microphone capture, tested on a null sink), GL/GLib for OpenCV
APT_PACKAGES := g++-aarch64-linux-gnu espeak-ng flite qemu-user-static debootstrap libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins libgl1 libglib2.0-0

.PHONY: setup paths system-deps demo test compile jetson phone emulator bench bench-kernels fuzz soak train-chimp train-pose train-asr clean

setup: $(VENV)/.installed system-deps paths

# record the data and weights folders in edgekit's config file: `edgekit` then finds them from any folder, without
# EDGEKIT_DATA / EDGEKIT_WEIGHTS (`edgekit paths` shows them)
paths: $(VENV)/.installed
	@if [ -d "$(EDGEKIT_DATA)" ] && [ -d "$(EDGEKIT_WEIGHTS)" ]; then \
	  $(EDGEKIT) -q paths --set data=$(EDGEKIT_DATA) weights=$(EDGEKIT_WEIGHTS) >/dev/null; fi

# the pinned set (constraints.txt) of every extra: compiler, runtimes, apps, bench, tests
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all,test]'
	touch $@

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages: $$missing (run: sudo apt-get install $$missing)"; exit 1; fi; \
	fi

demo: setup
	$(EDGEKIT) demo --output $(OUT)/demo

test: setup emulator
	$(PY) -m pytest -q -ra

compile: setup
	$(EDGEKIT) compile --model $(MODEL) --target $(TARGET) --backend $(BACKEND) --output $(OUT)/$(subst :,-,$(notdir $(MODEL)))-$(TARGET)-$(BACKEND) --force $(if $(QUANT),--quantize $(QUANT))

# every app model, every backend the device supports
jetson phone: setup emulator
	@target=$(if $(filter jetson,$@),jetson-orin,android-arm64); \
	backends=$$($(EDGEKIT) targets --json | $(PY) -c "import json,sys; print(next(t['backends'] for t in json.load(sys.stdin) if t['name']=='$$target').replace(',',' '))"); \
	for model in $$($(EDGEKIT) models); do for backend in $$backends; do \
	  $(EDGEKIT) compile --model $$model --target $$target --backend $$backend --output $(OUT)/$$target/$$model-$$backend --force || exit 1; \
	done; done

emulator: setup
	$(EDGEKIT) device emulator setup

# DEVICE=tracker://HOST:PORT/KEY: the models' TVM rows on that pool of devices, in parallel (docs/guide.md)
bench: setup
	$(EDGEKIT) bench --suite all --report-dir reports $(if $(FILTER),--filter '$(FILTER)') \
	  $(if $(DEVICE),--device '$(DEVICE)')

# the kernels alone, beside their peers: reports/kernels/bench.{json,md} + plots
bench-kernels: setup
	$(EDGEKIT) bench --suite all --filter '^(attention|scan)$$' --report-dir reports/kernels

# the shipped chimp weights (deterministic); DATA=ChimpACT-format dir trains on real data instead of synthetic
train-chimp: setup
	$(PY) -m edgekit.apps.chimp.train $(if $(DATA),--data $(DATA),--synth-dir $(OUT)/chimp-train) --out apps/chimp/weights/chimp_fused.pt --frames 3 --seed 0
	$(PY) -m edgekit.apps.chimp.train $(if $(DATA),--data $(DATA),--synth-dir $(OUT)/chimp-train) --out apps/chimp/weights/chimp_single.pt --frames 1 --seed 0

# the shipped 3D lifters (KTPFormer + single-frame MLP baseline) on synthetic motion, deterministic (seed 0)
train-pose: setup
	$(PY) -m edgekit.apps.pose.train_lifter --out apps/pose/weights --seed 0

# the shipped Samba-ASR weights (deterministic): espeak-ng/flite speech of the Debian fortunes text, then CTC training
ASR_TTS_PACKAGES := espeak-ng flite fortunes
train-asr: setup
	@missing=$$(for p in $(ASR_TTS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing Debian packages: $$missing (run: sudo apt-get install $$missing)"; exit 1; fi; \
	fi
	$(PY) -m edgekit.apps.asr.tts_data --out $(OUT)/asr-tts --train 6000 --test 300 --exclude $(SHARED)/data/asr/librivox/transcription
	$(PY) -m edgekit.apps.asr.train_samba --data $(OUT)/asr-tts --out $(OUT)/samba-ctc.pt
	$(PY) -m edgekit.apps.asr.train_samba --data $(OUT)/asr-tts --init $(OUT)/samba-ctc.pt --decoder-layers 2 \
	  --steps 3000 --out apps/asr/weights/samba.pt

# 10,000 generated cases per fuzz test (CI runs a few hundred): manifests (bytes, fields, nested type confusion),
# inputs, WAV headers, and payloads (.onnx/.pte/.so) mutated with their checksums recomputed
fuzz: setup
	EDGEKIT_FUZZ_EXAMPLES=10000 $(PY) -m pytest -q tests/test_reliability.py -k fuzz --hypothesis-show-statistics

# superres, asr and pose live for SOAK_SECONDS each (concurrently, 1 thread each) from looped files: RSS growth
# after warm-up and dropped frames per minute -> reports/soak.json
SOAK_SECONDS ?= 600
soak: setup
	$(PY) -m edgekit.bench.soak --seconds $(SOAK_SECONDS) --report reports/soak.json

clean:
	rm -rf $(OUT) .pytest_cache
