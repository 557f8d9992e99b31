# tests/gpu/: the engine's CUDA backend on a GPU (tests/gpu/README.md).
#
#   make test-gpu    ops_test and parity --device cuda (every op, every fixture),
#                    engine_test (a cuda engine created and freed), the
#                    full-size htdemucs against the reference and the CPU engine, and
#                    `workerd separate --device cuda` against the CPU's stems
#                    (tests/gpu/test_gpu.py); prints SKIP without a usable CUDA device
#                    (no GPU, no driver, or binaries built without the CUDA backend)
#   make gpu-carry   what one device call needs beside the working tree, in ignored
#                    folders: .whl/ (the demucs wheels the device's PyTorch lacks) and
#                    .gpu-carry/ (the built binaries, and the shared libraries they
#                    load that a bare CUDA image may lack, xz-packed); see
#                    tests/gpu/run-device, the one script that call runs

TEST_SUITES += test-gpu
.PHONY: test-gpu gpu-carry

test-gpu: $(OPS_TEST_BIN) $(ENGINE_TEST_BIN) $(PARITY_BIN) $(WORKERD_BIN)
	$(PY) tests/gpu/test_gpu.py --build $(BUILD)

gpu-carry: $(OPS_TEST_BIN) $(PARITY_BIN) $(ENGINE_TEST_BIN) $(WORKERD_BIN) $(BUILD)/bench/cpu_engine
	tests/gpu/make-carry $(BUILD)
