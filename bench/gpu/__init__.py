"""The GPU check's parts: see bench/gpu_check.py and the GPU section of bench/README.md."""
