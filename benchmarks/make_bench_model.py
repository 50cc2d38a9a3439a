#!/usr/bin/env python3
"""Creates bench-mixtral-800m as ../shared/docs/REFERENCE-FIGURES.md describes it: a Mixtral
checkpoint with random weights (normal, std 0.02), bf16, Hugging Face layout, llama-spm tokenizer.
Generated on demand, never committed (it is 1.58 GB).

    python3 benchmarks/make_bench_model.py [--out bench-mixtral-800m]
"""
import argparse
import os
import shutil

import torch
from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-mixtral-800m"))
    args = parser.parse_args()
    config = MixtralConfig(vocab_size=32000, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                           num_attention_heads=8, num_key_value_heads=2, head_dim=128, num_local_experts=8,
                           num_experts_per_tok=2, max_position_embeddings=4096, rope_theta=1e6,
                           rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.02)
    torch.manual_seed(0)
    model = MixtralForCausalLM(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.save_pretrained(args.out)
    tokenizer = os.path.join(ROOT, "fixtures", "tokenizers", "llama-spm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer, name), args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters")


if __name__ == "__main__":
    main()
