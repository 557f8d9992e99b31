"""Checkpoint conversion for the separation engine.

Reads official demucs `.th` checkpoints (torch zip or legacy pickles) without torch,
and writes the engine's `.safetensors` weights file described in models/FORMAT.md.

Modules:
  torch_checkpoint  restricted reader for torch-saved pickles, lazy tensors
  htdemucs_args     HTDemucs.__init__ signature table, argument normalisation
  safetensors_file  writer (atomic) and header reader for .safetensors
  converter         checkpoint(s) -> weights file, hyperparameter summary
  official_models   catalog of the official HTDemucs models and their download
"""
