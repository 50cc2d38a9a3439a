#!/usr/bin/env python3
"""Tiny random checkpoints of every supported architecture, and transformers' float32 references.

    python3 scripts/fixtures.py build [--out fixtures]
        Writes fixtures/models/<arch>/ (config.json, generation_config.json, model.safetensors in
        bf16 as transformers saves it, tokenizer files linked from fixtures/tokenizers/llama-spm)
        and fixtures/models/<arch>/reference/ (prompt logits as float32 .npy, prompt and greedy
        continuation ids as JSON). The Swift tests read these; they never run Python.

    python3 scripts/fixtures.py check --switchyard .build/release/switchyard [--seed N]
        The acceptance check: builds fresh checkpoints with another seed in a temporary folder,
        runs `switchyard logits` and `switchyard generate --temperature 0 --precision f32` on them
        and compares with transformers (1e-4 relative per position; identical greedy tokens).

Needs: pip install torch transformers gguf sentencepiece
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM, GenerationConfig

from hf_convert import convert_gguf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PROMPT = "The old lighthouse keeper"
NEW_TOKENS = 24
COMMON = dict(vocab_size=32000, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# Each architecture with the options that make it differ from the others, so that every code path
# the issue names is exercised: rope variants in both config forms, biases, q/k norms, dense layers
# inside MoE models, shared experts, top-k normalisation on and off, tied embeddings.
ARCHITECTURES = {
    "llama": dict(model_type="llama", num_hidden_layers=2, intermediate_size=64, rms_norm_eps=1e-5,
                  rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                                       high_freq_factor=4.0, original_max_position_embeddings=64),
                  old_config_form=True),
    "qwen2": dict(model_type="qwen2", num_hidden_layers=2, intermediate_size=64, tie_word_embeddings=True,
                  rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
    "qwen3": dict(model_type="qwen3", num_hidden_layers=2, intermediate_size=64, head_dim=16, tie_word_embeddings=True,
                  rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "mixtral": dict(model_type="mixtral", num_hidden_layers=2, intermediate_size=48, num_local_experts=4,
                    num_experts_per_tok=2, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
    "qwen2_moe": dict(model_type="qwen2_moe", num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=24,
                      shared_expert_intermediate_size=40, num_experts=4, num_experts_per_tok=2,
                      norm_topk_prob=False, mlp_only_layers=[1], decoder_sparse_step=1),
    "qwen3_moe": dict(model_type="qwen3_moe", num_hidden_layers=2, intermediate_size=64, moe_intermediate_size=24,
                      head_dim=16, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=2,
                      rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                           original_max_position_embeddings=128)),
    "olmoe": dict(model_type="olmoe", num_hidden_layers=2, intermediate_size=24, num_experts=4, num_experts_per_tok=2,
                  norm_topk_prob=False, clip_qkv=3.0),
    # Latent attention with the plain query path, YaRN with DeepSeek's mscale (as V2-Lite has it),
    # softmax routing limited to the 2 best of 4 groups (with groups scored by their best expert, the
    # limit can only exclude one of the top k when k exceeds topk_group: 3 here), a dense first
    # layer, a shared expert.
    "deepseek_v2": dict(model_type="deepseek_v2", num_hidden_layers=3, intermediate_size=64, q_lora_rank=None,
                        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
                        n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, n_shared_experts=1,
                        topk_method="group_limited_greedy", n_group=4, topk_group=2, routed_scaling_factor=1.5,
                        first_k_dense_replace=1, num_key_value_heads=4,
                        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                                             original_max_position_embeddings=128, mscale=0.707, mscale_all_dim=0.707,
                                             beta_fast=32, beta_slow=1)),
    # The compressed query path, values narrower than keys, sigmoid routing with a selection bias
    # (set below: transformers starts it at zero) over the best 2 of 4 groups, normalised and scaled.
    "deepseek_v3": dict(model_type="deepseek_v3", num_hidden_layers=3, intermediate_size=64, q_lora_rank=24,
                        kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=12,
                        n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=24, n_shared_experts=1,
                        n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                        first_k_dense_replace=1, num_key_value_heads=4, rope_interleave=True,
                        rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
    # Attention sinks (set below, large enough to matter), a sliding window shorter than the prompt
    # alternating with full attention, biases everywhere, a swiglu_limit that clamps, YaRN.
    "gpt_oss": dict(model_type="gpt_oss", num_hidden_layers=2, intermediate_size=24, num_local_experts=4,
                    num_experts_per_tok=2, head_dim=8, sliding_window=3,
                    layer_types=["sliding_attention", "full_attention"], swiglu_limit=1.5,
                    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0, beta_slow=1.0,
                                         truncate=False, original_max_position_embeddings=128)),
    # The same with its experts in MXFP4 as OpenAI released GPT-OSS (`_blocks` / `_scales`, made
    # below from the bf16 experts; rows of whole blocks of 32 need intermediate_size 32).
    "gpt_oss_mxfp4": dict(model_type="gpt_oss", num_hidden_layers=2, intermediate_size=32, num_local_experts=4,
                          num_experts_per_tok=2, head_dim=8, sliding_window=3,
                          layer_types=["sliding_attention", "full_attention"], swiglu_limit=1.5,
                          rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                                               beta_slow=1.0, truncate=False, original_max_position_embeddings=128)),
}


def mxfp4_experts(folder, write_blocks):
    """GPT-OSS's bf16 experts rounded to MXFP4 by the gguf package: with write_blocks False, the
    rounded values are written back as bf16 (exact: E2M1 times a power of two), the checkpoint
    transformers' reference runs on; with True, they are replaced by Hugging Face's MXFP4 tensors
    (byte k of a block holds elements 2k and 2k + 1; rows are outputs), as OpenAI's release has them."""
    from gguf import GGMLQuantizationType, quants
    from safetensors.torch import load_file, save_file
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    for name in [n for n in tensors if n.endswith("experts.gate_up_proj") or n.endswith("experts.down_proj")]:
        rows = tensors[name].float().transpose(1, 2).contiguous().numpy()  # [E, out, in]
        E, R, C = rows.shape
        blocks = quants.quantize(rows.reshape(E * R, C), GGMLQuantizationType.MXFP4).reshape(E, R, C // 32, 17)
        if not write_blocks:
            back = quants.dequantize(blocks.reshape(E * R, -1), GGMLQuantizationType.MXFP4).reshape(E, R, C)
            tensors[name] = torch.from_numpy(back).transpose(1, 2).contiguous().to(torch.bfloat16)
            continue
        codes = np.concatenate([blocks[..., 1:] & 0x0F, blocks[..., 1:] >> 4], axis=-1)  # element order
        pairs = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
        del tensors[name]
        tensors[name + "_blocks"] = torch.from_numpy(np.ascontiguousarray(pairs))
        tensors[name + "_scales"] = torch.from_numpy(np.ascontiguousarray(blocks[..., 0]))
    save_file(tensors, path, metadata={"format": "pt"})
    if write_blocks:
        with open(os.path.join(folder, "config.json")) as f:
            cfg = json.load(f)
        cfg["quantization_config"] = dict(quant_method="mxfp4", modules_to_not_convert=[
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"])
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)


def make_tokenizer(out_dir):
    """llama-spm (the Llama 2 / Mistral / Mixtral vocabulary) as a Hugging Face tokenizer.json."""
    convert_gguf_tokenizer("ggml-vocab-llama-spm.gguf", out_dir)


def build_checkpoint(arch, folder, seed, tokenizer_dir, link_tokenizer, shard=False):
    spec = dict(ARCHITECTURES[arch])
    old_form = spec.pop("old_config_form", False)
    model_type = spec.pop("model_type")
    torch.manual_seed(seed)
    config = transformers.CONFIG_MAPPING[model_type](**{**COMMON, **spec})
    config.initializer_range = 0.25  # large enough that logits are well separated: greedy is stable
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # norms start at 1: give them some variety too
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("sinks"):
                p.copy_(torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # large enough to change which experts win
                b.copy_(0.3 * torch.randn_like(b))
    model = model.to(torch.bfloat16)
    os.makedirs(folder, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    # Sharded: several model-0000N-of-0000M.safetensors and model.safetensors.index.json.
    model.save_pretrained(folder, max_shard_size="1MB" if shard else "5GB")
    if old_form:
        # The pre-transformers-5 form: rope_theta and rope_scaling at the top level.
        path = os.path.join(folder, "config.json")
        with open(path) as f:
            cfg = json.load(f)
        rope = cfg.pop("rope_parameters")
        cfg["rope_theta"] = rope.pop("rope_theta")
        cfg["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        target = os.path.join(folder, name)
        if os.path.lexists(target):
            os.remove(target)
        if link_tokenizer:
            os.symlink(os.path.relpath(os.path.join(tokenizer_dir, name), folder), target)
        else:
            shutil.copy(os.path.join(tokenizer_dir, name), target)


def reference(folder):
    """transformers' float32 logits for the prompt and its greedy continuation."""
    # The tokenizer oracle is the `tokenizers` library on the folder's tokenizer.json (AutoTokenizer
    # would substitute its own pipeline for some model types, e.g. Qwen2Tokenizer for qwen2).
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = torch.tensor([tok.encode(PROMPT).ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float().numpy()
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    greedy = out.sequences[0, ids.shape[1]:].tolist()
    # The smallest gap between the best and second-best logit along the greedy path, relative to
    # the logits' scale: float32 summation order cannot flip a choice unless this is tiny.
    margins = []
    for score in out.scores:
        top = torch.topk(score[0], 2).values
        margins.append(float((top[0] - top[1]) / score[0].abs().max()))
    return ids[0].tolist(), logits, greedy, min(margins)


def routing_rules_matter(folder):
    """For the DeepSeek fixtures: the group limit (and V3's selection bias) must change transformers'
    logits, or the fixture would not test them."""
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    ids = torch.tensor([tok.encode(PROMPT).ids])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        base = model(ids).logits
        routers = [layer.mlp.gate for layer in model.model.layers if hasattr(layer.mlp, "gate")]
        for r in routers:
            r.num_group, r.topk_group = 1, 1
        ungrouped = model(ids).logits
        assert not torch.allclose(base, ungrouped, rtol=1e-4), f"{folder}: the group limit excludes no chosen expert"
        if hasattr(routers[0], "e_score_correction_bias"):
            for r in routers:
                r.e_score_correction_bias.zero_()
            assert not torch.allclose(ungrouped, model(ids).logits, rtol=1e-4), f"{folder}: the selection bias changes no choice"


def build(args):
    out = os.path.abspath(args.out)
    tokenizer_dir = os.path.join(out, "tokenizers", "llama-spm")
    make_tokenizer(tokenizer_dir)
    for arch in args.only or ARCHITECTURES:
        seed = 1234
        while True:
            folder = os.path.join(out, "models", arch)
            shutil.rmtree(folder, ignore_errors=True)
            build_checkpoint(arch, folder, seed, tokenizer_dir, link_tokenizer=True)
            if arch.endswith("_mxfp4"):
                mxfp4_experts(folder, write_blocks=False)
            prompt, logits, greedy, margin = reference(folder)
            if margin > 1e-3:
                if arch.endswith("_mxfp4"):
                    mxfp4_experts(folder, write_blocks=True)
                if arch.startswith("deepseek"):
                    routing_rules_matter(folder)
                break
            seed += 1
        ref = os.path.join(folder, "reference")
        os.makedirs(ref, exist_ok=True)
        np.save(os.path.join(ref, "prompt_logits.npy"), logits.astype(np.float32))
        with open(os.path.join(ref, "reference.json"), "w") as f:
            json.dump(dict(prompt=PROMPT, prompt_tokens=prompt, greedy_tokens=greedy, seed=seed,
                           min_relative_margin=margin, transformers=transformers.__version__,
                           torch=torch.__version__), f, indent=2)
        print(f"{arch}: seed {seed}, {len(prompt)} prompt tokens, greedy {greedy[:8]}..., margin {margin:.4f}")


def check(args):
    failures = 0
    work = tempfile.mkdtemp()
    tokenizer_dir = os.path.join(work, "tokenizer")
    make_tokenizer(tokenizer_dir)
    for arch in ARCHITECTURES:
        folder = os.path.join(work, arch)
        seed = args.seed
        while True:
            build_checkpoint(arch, folder, seed, tokenizer_dir, link_tokenizer=False,
                             shard=arch in ("mixtral", "qwen3_moe"))
            if arch.endswith("_mxfp4"):
                mxfp4_experts(folder, write_blocks=False)
            prompt, logits, greedy, margin = reference(folder)
            if margin > 1e-3:
                if arch.endswith("_mxfp4"):
                    mxfp4_experts(folder, write_blocks=True)
                break
            seed += 1
        npy = os.path.join(work, arch + ".npy")
        subprocess.run([args.switchyard, "logits", "--model", folder, "--precision", "f32",
                        "--tokens", ",".join(map(str, prompt)), "--out", npy], check=True)
        ours = np.load(npy)
        rel = np.linalg.norm(ours - logits, axis=1) / np.linalg.norm(logits, axis=1)
        result = subprocess.run([args.switchyard, "generate", "--model", folder, "--prompt", PROMPT,
                                 "--temperature", "0", "--precision", "f32", "--max-tokens", str(NEW_TOKENS),
                                 "--ignore-eos", "--json"], check=True, capture_output=True, text=True)
        generated = json.loads(result.stdout.strip().splitlines()[-1])
        ok = ours.shape == logits.shape and rel.max() <= 1e-4 and generated["tokens"] == greedy \
            and generated["prompt_tokens"] == prompt
        failures += 0 if ok else 1
        sharded = os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
        print(f"{'ok  ' if ok else 'FAIL'} {arch:10s} seed {seed}{' (sharded)' if sharded else ''}: max relative logit error {rel.max():.2e} "
              f"over {len(prompt)} positions; greedy {len(greedy)} tokens "
              f"{'identical' if generated['tokens'] == greedy else 'DIFFER'}")
        if generated["tokens"] != greedy:
            print("   transformers:", greedy, "\n   switchyard:  ", generated["tokens"])
    shutil.rmtree(work)
    print(f"{len(ARCHITECTURES) - failures} passed, {failures} failed")
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", default=os.path.join(ROOT, "fixtures"))
    b.add_argument("--only", nargs="*", choices=list(ARCHITECTURES), help="rebuild these architectures only")
    c = sub.add_parser("check")
    c.add_argument("--switchyard", default=os.path.join(ROOT, ".build", "release", "switchyard"))
    c.add_argument("--seed", type=int, default=98765)
    args = parser.parse_args()
    sys.exit(build(args) if args.command == "build" else check(args))


if __name__ == "__main__":
    main()
