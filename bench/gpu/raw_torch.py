"""Raw torch throughput of an image model file: what inferd's figure is compared with.

    python3 bench/gpu/raw_torch.py --device cuda:0 --batch 32 --seconds 5 --image-size 224 FILE...

Each file is loaded the plain way for its format (torch.jit.load; torch.export.load().module()),
then called in a loop on a batch of uint8 images that starts in ordinary (pageable) host memory,
as a server's batch does: copy to the device, run under inference_mode, copy the logits back.
Prints one JSON line: images/s per file (or the error that file raised).
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile

import torch


def load(path: str, device: str) -> torch.nn.Module:
    with zipfile.ZipFile(path) as archive:
        exported = any(name.endswith("/archive_format") for name in archive.namelist())
    if exported:
        return torch.export.load(path).module().to(device)
    return torch.jit.load(path, map_location=device).eval()


def images_per_s(module: torch.nn.Module, device: str, batch: int, size: int, seconds: float) -> float:
    host = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        for _ in range(10):  # cuDNN picks its algorithms, TorchScript profiles, clocks rise
            module(host.to(device)).cpu()
        batches = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            module(host.to(device, non_blocking=True)).cpu()
            batches += 1
        elapsed = time.perf_counter() - started
    return batches * batch / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.cuda.set_device(args.device)
    figures: dict[str, float | str] = {}
    for path in args.files:
        try:
            figures[path] = images_per_s(
                load(path, args.device), args.device, args.batch, args.image_size, args.seconds
            )
        except Exception as problem:  # one file that fails must not hide the other's figure
            figures[path] = f"{type(problem).__name__}: {str(problem)[-500:]}"
    print(json.dumps({"images_per_s": figures}))


if __name__ == "__main__":
    main()
