# bench/gpu: seconds per 4-minute song on the GPU, the engine's CUDA backend
# (build/bench/cpu_engine --device cuda) against the reference PyTorch demucs
# apply_model on the same GPU (bench/gpu, bench/gpu_torch.py, bench/benchlib.py; results
# in bench/results/gpu-<YYYYmmdd-HHMM>[-NOISY|-INVALID].txt). Without a usable CUDA
# device it prints SKIP and writes nothing. Included by tests/tests.mk, beside
# tests/gpu/gpu.mk.
#
#   make bench-gpu      SEP_TORCH_PYTHON: a python with CUDA torch + demucs (default: the
#                       first of python3 on PATH, build/refvenv that imports both)

.PHONY: bench-gpu
bench-gpu: $(BUILD)/bench/cpu_engine
	$(PY) bench/gpu $(if $(SEP_TORCH_PYTHON),--torch-python $(SEP_TORCH_PYTHON))
