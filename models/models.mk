# models/: the HTDemucs engine (graph, CPU backend, apply logic, safetensors loading).
