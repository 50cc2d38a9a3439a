#!/usr/bin/env python3
"""GGUF's own quantisers (the gguf package, bit-exact with ggml's reference C) on test rows, so the
Swift tests check Switchyard's block layout and rounding without Python.

    pip install gguf numpy && python3 scripts/quant_vectors.py   # writes fixtures/quant/vectors.json

The gguf package cannot quantise Q4_K or Q6_K (it only dequantises them). With `--ggml-quants LIB`,
a shared library of ggml's own ggml-quants.c (built by you from a llama.cpp checkout, with
-ffp-contract=off so no multiply-add is fused, and stubs for the few ggml functions it calls; never
committed here), those rows are quantised by its quantize_row_q4_K_ref and quantize_row_q6_K_ref
(Q4_K's also dequantised by the gguf package); without it they are kept from the existing file.
"""
import argparse
import ctypes
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


def q4_k_rows():
    rng = np.random.default_rng(23)
    out = [rng.standard_normal(512).astype(np.float32) * 0.02,
           np.abs(rng.standard_normal(256)).astype(np.float32),                     # no negative values: min 0
           np.zeros(256, dtype=np.float32),
           (np.arange(256, dtype=np.float32) - 127.5) / 9.0,
           rng.standard_normal(256).astype(np.float32) * np.float32(3e-3)]
    out[0][17] = 0.4                                                                  # an outlier
    out[3][64:96] = 1.25                                                              # a constant sub-block
    return out


def q4_k_cases(library, path):
    if library is None:
        with open(path) as f:
            return json.load(f)["q4_k_cases"]
    lib = ctypes.CDLL(library)
    quantize = lib.quantize_row_q4_K_ref
    quantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    cases = []
    for r in q4_k_rows():
        r = np.ascontiguousarray(r, dtype=np.float32)
        out = np.zeros(r.size // 256 * 144, dtype=np.uint8)
        quantize(r.ctypes.data, out.ctypes.data, r.size)
        back = quants.dequantize(out[None, :], GGMLQuantizationType.Q4_K)[0]
        q6 = np.zeros(r.size // 256 * 210, dtype=np.uint8)
        lib.quantize_row_q6_K_ref.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        lib.quantize_row_q6_K_ref(r.ctypes.data, q6.ctypes.data, r.size)
        cases.append(dict(values=[float(v) for v in r], q4_k=out.tobytes().hex(), dequantized=[float(v) for v in back],
                          q6_k=q6.tobytes().hex()))
    return cases


def mxfp4_every_code_and_scale():
    """256 blocks, block e with scale byte e and element j holding code j % 16 (GGUF's layout: low
    nibble of byte j is element j, high nibble element j + 16), their values by the gguf package
    as float32 bit patterns (2^128 overflows to infinity), and the same blocks in Hugging Face's
    layout (byte k: element 2k low, 2k + 1 high; scales apart), checked here against transformers'
    own dequantisation (equal as numbers; its code 8 is -0.0, gguf's +0.0)."""
    gguf_blocks = np.zeros((256, 17), dtype=np.uint8)
    hf_blocks = np.zeros((256, 16), dtype=np.uint8)
    for e in range(256):
        codes = [j % 16 for j in range(32)]
        gguf_blocks[e, 0] = e
        for j in range(16):
            gguf_blocks[e, 1 + j] = codes[j] | codes[j + 16] << 4
            hf_blocks[e, j] = codes[2 * j] | codes[2 * j + 1] << 4
    values = quants.dequantize(gguf_blocks.reshape(1, -1), GGMLQuantizationType.MXFP4).reshape(256, 32).astype(np.float32)
    try:
        import torch
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors
        # [experts=1, rows=256, blocks=1, 16] -> transposed [1, 32, 256].
        theirs = convert_moe_packed_tensors(torch.from_numpy(hf_blocks.reshape(1, 256, 1, 16)),
                                            torch.from_numpy(np.arange(256, dtype=np.uint8).reshape(1, 256, 1)),
                                            dtype=torch.float32)[0].T.numpy()
        # Equal as values: transformers' code 8 is -0.0 where gguf's is +0.0.
        assert np.array_equal(theirs, values), "gguf and transformers disagree on MXFP4"
    except ImportError:
        pass
    return dict(gguf=gguf_blocks.tobytes().hex(), hf_blocks=hf_blocks.tobytes().hex(),
                value_bits=[int(b) for b in values.view(np.uint32).reshape(-1)])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ggml-quants", help="a shared library of ggml's ggml-quants.c, for the Q4_K rows")
    args = parser.parse_args()
    cases = []
    for r in rows():
        entry = dict(values=[float(v) for v in r])
        for name, kind in (("q8_0", GGMLQuantizationType.Q8_0), ("q4_0", GGMLQuantizationType.Q4_0),
                           ("mxfp4", GGMLQuantizationType.MXFP4)):
            entry[name] = quants.quantize(r[None, :], kind)[0].tobytes().hex()
        cases.append(entry)
    path = os.path.join(ROOT, "fixtures", "quant", "vectors.json")
    q4_k = q4_k_cases(args.ggml_quants, path)
    mxfp4 = mxfp4_every_code_and_scale()
    with open(path, "w") as f:
        json.dump(dict(cases=cases, q4_k_cases=q4_k, mxfp4_every_code=mxfp4), f)
    print(f"{len(cases)} rows, {len(q4_k)} Q4_K rows")


if __name__ == "__main__":
    main()
