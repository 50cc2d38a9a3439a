#!/usr/bin/env python3
"""Blocks of every GGUF format Switchyard widens through GGMLBlocks, and what the gguf Python
package's `dequantize` makes of them, so the Swift tests check those formats bit for bit without
Python.

    pip install gguf numpy && python3 scripts/ggml_block_vectors.py   # writes fixtures/quant/ggml_blocks.json

The block bytes are random (every bit pattern of the quants and sub-scales occurs across the
blocks), with the float16 super-scales set to finite values of both signs, subnormals and zero.
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType as T, quants
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Byte offsets of each format's float16 scales (d, and dmin or m where it has one).
SCALES = {"Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108], "Q5_K": [0, 2],
          "Q6_K": [208], "IQ4_NL": [0], "IQ4_XS": [0]}
HALVES = [0.01, -0.02, 1.5e-3, 6.1e-5, 3.0e-7, 0.0, -0.75, 2.0, 1e-4]


def main():
    rng = np.random.default_rng(2024)
    out = {}
    for name, offsets in SCALES.items():
        qtype = T[name]
        values, size = GGML_QUANT_SIZES[qtype]
        blocks = rng.integers(0, 256, size=(16, size), dtype=np.uint8)
        for i in range(blocks.shape[0]):
            for k, offset in enumerate(offsets):
                h = np.float16(HALVES[(i + 3 * k) % len(HALVES)] * (1 + 0.37 * (i % 5)))
                blocks[i, offset:offset + 2] = np.frombuffer(h.tobytes(), dtype=np.uint8)
        widened = quants.dequantize(blocks.reshape(1, -1), qtype).reshape(-1).astype(np.float32)
        assert widened.size == 16 * values and np.all(np.isfinite(widened))
        out[name.lower()] = dict(blocks=blocks.tobytes().hex(), values=widened.view(np.uint32).tolist())
    path = os.path.join(ROOT, "fixtures", "quant", "ggml_blocks.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {path}: {', '.join(out)}")


if __name__ == "__main__":
    main()
