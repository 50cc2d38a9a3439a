#!/usr/bin/env python3
"""GGUF's own quantisers (the gguf package, bit-exact with ggml's reference C) on test rows, so the
Swift tests check Switchyard's block layout and rounding without Python.

    pip install gguf numpy && python3 scripts/quant_vectors.py   # writes fixtures/quant/vectors.json
"""
import json
import os

import numpy as np
from gguf import GGMLQuantizationType, quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rows():
    rng = np.random.default_rng(11)
    out = [rng.standard_normal(96).astype(np.float32) * 0.05,
           np.zeros(64, dtype=np.float32),
           (np.arange(64, dtype=np.float32) - 31.5) / 7.0,                          # many exact halves after scaling
           np.concatenate([np.full(32, 127.0 / 254.0), np.linspace(-1, 1, 32)]).astype(np.float32),
           rng.standard_normal(160).astype(np.float32) * np.float32(3e-3)]
    out[1][5] = 0.0
    return out


def main():
    cases = []
    for r in rows():
        entry = dict(values=[float(v) for v in r])
        for name, kind in (("q8_0", GGMLQuantizationType.Q8_0), ("q4_0", GGMLQuantizationType.Q4_0)):
            entry[name] = quants.quantize(r[None, :], kind)[0].tobytes().hex()
        cases.append(entry)
    path = os.path.join(ROOT, "fixtures", "quant", "vectors.json")
    with open(path, "w") as f:
        json.dump(dict(cases=cases), f)
    print(f"{len(cases)} rows")


if __name__ == "__main__":
    main()
