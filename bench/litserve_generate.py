"""SmolLM2 behind LitServe's streaming API, for bench/generation.py. Runs in LitServe's own venv:

    /work/venvs/litserve/bin/python bench/litserve_generate.py --port 8092 --max-batch-size 32 \
        --site-packages /work/main/.venv/lib/python3.11/site-packages

That venv has litserve and torch but not transformers: `--site-packages` (inferd's venv) is added
after LitServe's own paths, so torch and LitServe come from LitServe's venv and only what it lacks
(transformers, tokenizers, safetensors) from inferd's, the same model code inferd runs.

It is LitServe's streaming API as documented: `stream=True` and a LitAPI whose predict yields. With
max_batch_size > 1, LitServe batches the requests that arrive within batch_timeout and streams the
batch (its BatchedStreamingLoop): one left-padded prefill, then one batched decode step per yield
until the batch's longest sequence ends; requests that arrive meanwhile wait for the next batch.
POST /generate {"prompt": ..., "max_tokens": N} answers one JSON line per step: {"text", "tokens"}.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import litserve as ls

MODELS = Path(__file__).resolve().parent.parent / "models"


class SmolLM2Stream(ls.LitAPI):
    """Defined at module level: LitServe spawns its inference worker and pickles this into it."""

    def __init__(self, threads: int, cpus: set[int], site_packages: str, **options: Any) -> None:
        super().__init__(**options)
        self.threads, self.cpus, self.site_packages = threads, cpus, site_packages

    def setup(self, device: str) -> None:
        if self.site_packages and self.site_packages not in sys.path:
            sys.path.append(self.site_packages)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        sys.path[:0] = [str(MODELS), str(MODELS.parent)]  # the example handler's module imports inferd
        from smollm2 import weights_source

        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        torch.set_num_threads(self.threads)
        source, options = weights_source()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(source, **options)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **options).eval()
        self.end_tokens = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}

    def decode_request(self, request):  # type: ignore[no-untyped-def]  # LitServe reads the annotation
        return list(self.tokenizer.encode(request["prompt"])), int(request.get("max_tokens", 64))

    def predict(self, inputs: list[tuple[list[int], int]]) -> Any:
        torch = self.torch
        with torch.inference_mode():
            ids, mask = self._left_padded([prompt for prompt, _ in inputs])
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
            )
            made: list[list[int]] = [[] for _ in inputs]
            live = [True] * len(inputs)
            for _ in range(max(limit for _, limit in inputs)):
                chosen = out.logits[:, -1].argmax(dim=-1)
                yield [
                    self._advance(made[row], live, row, int(chosen[row]), inputs[row][1]) for row in range(len(inputs))
                ]
                if not any(live):
                    return
                mask = torch.cat([mask, torch.ones(len(inputs), 1, dtype=mask.dtype)], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=chosen[:, None], attention_mask=mask, position_ids=positions,
                    cache=out.past_key_values, use_cache=True,
                )  # fmt: skip

    def _advance(self, made: list[int], live: list[bool], row: int, token: int, limit: int) -> dict[str, Any]:
        if not live[row]:
            return {"text": "", "tokens": 0}
        if token in self.end_tokens:
            live[row] = False
            return {"text": "", "tokens": 0}
        before = self.tokenizer.decode(made, skip_special_tokens=True)
        made.append(token)
        live[row] = len(made) < limit
        return {"text": self.tokenizer.decode(made, skip_special_tokens=True)[len(before) :], "tokens": 1}

    def _left_padded(self, prompts: list[list[int]]) -> tuple[Any, Any]:
        torch = self.torch
        longest = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), longest, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = torch.tensor(prompt)
            mask[row, longest - len(prompt) :] = 1
        return ids, mask

    def encode_response(self, outputs: Any) -> Any:
        for step in outputs:
            yield list(step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8092)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the inference worker")
    parser.add_argument("--cpus", default="", help="CPUs the inference worker is pinned to, e.g. 0 or 0-1")
    parser.add_argument("--site-packages", default="", help="where transformers is (appended to sys.path)")
    args = parser.parse_args(argv)
    api = SmolLM2Stream(
        args.threads, _cpus(args.cpus), args.site_packages,
        max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout_ms / 1000, stream=True,
        api_path="/generate",
    )  # fmt: skip
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=600)
    server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False)
    return 0


def _cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


if __name__ == "__main__":
    sys.exit(main())
