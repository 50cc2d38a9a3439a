#!/usr/bin/env python3
"""Writes the demo model's card (README.md, loss curve, expert usage per layer) and transformers'
float32 reference for the Swift tests (fixtures/demo-reference/).

    python3 scripts/demo_model_card.py models/switchyard-kjv-moe

Run by train_demo_model.py at the end of training; can be rerun on its own.
"""
import importlib.util
import json
import os
import sys

import matplotlib
import numpy as np
import tokenizers
import torch
from transformers import AutoModelForCausalLM

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["Once upon a time", "And the king said"]
REFERENCE_PROMPT = "Once upon a time"
REFERENCE_TOKENS = 48


def load_training_script():
    spec = importlib.util.spec_from_file_location("train", os.path.join(ROOT, "scripts", "train_demo_model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    folder = os.path.abspath(sys.argv[1])
    with open(os.path.join(folder, "training_log.json")) as f:
        training = json.load(f)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()

    # Loss curve.
    log = training["log"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    train_points = [(e["tokens"] / 1e6, e["train_loss"]) for e in log if "train_loss" in e]
    valid_points = [(e["tokens"] / 1e6, e["valid_loss"]) for e in log if "valid_loss" in e]
    ax.plot(*zip(*train_points), label="training batch", linewidth=1)
    ax.plot(*zip(*valid_points), "o-", label="held-out chapters", markersize=3)
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("switchyard-kjv-moe training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "loss.png"), dpi=110)

    # Expert usage per layer on the held-out chapters: how often each expert is in a token's top 2.
    chapters = load_training_script().kjv_chapters()
    held_out = [chapters[i] for i in range(0, len(chapters), 50)]
    layers, experts = config["num_hidden_layers"], config["num_local_experts"]
    counts = np.zeros((layers, experts), dtype=np.int64)
    with torch.no_grad():
        for text in held_out:
            ids = torch.tensor([tok.encode(text).ids[:1024]])
            out = model(ids, output_router_logits=True)
            for layer, logits in enumerate(out.router_logits):
                top = torch.topk(logits.float(), config["num_experts_per_tok"], dim=-1).indices.flatten()
                counts[layer] += np.bincount(top.numpy(), minlength=experts)
    share = counts / counts.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    im = ax.imshow(share * 100, cmap="viridis", aspect="auto")
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    ax.set_xticks(range(experts))
    ax.set_yticks(range(layers))
    for l in range(layers):
        for e in range(experts):
            ax.text(e, l, f"{share[l, e] * 100:.0f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title("share of routed tokens (%), held-out chapters")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "expert-usage.png"), dpi=110)

    # Samples (greedy) and transformers' float32 reference for the Swift tests.
    samples = []
    for prompt in PROMPTS:
        ids = torch.tensor([tok.encode(prompt).ids])
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=None, pad_token_id=0)
        samples.append((prompt, tok.decode(out[0].tolist())))
    reference = os.path.join(ROOT, "fixtures", "demo-reference")
    os.makedirs(reference, exist_ok=True)
    ids = torch.tensor([tok.encode(REFERENCE_PROMPT).ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float().numpy()
        out = model.generate(ids, max_new_tokens=REFERENCE_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    np.save(os.path.join(reference, "prompt_logits.npy"), logits.astype(np.float32))
    with open(os.path.join(reference, "reference.json"), "w") as f:
        json.dump(dict(prompt=REFERENCE_PROMPT, prompt_tokens=ids[0].tolist(),
                       greedy_tokens=out[0, ids.shape[1]:].tolist(),
                       greedy_text=tok.decode(out[0, ids.shape[1]:].tolist())), f, indent=2)

    parameters = training["parameters"]
    expert_parameters = layers * experts * 3 * config["hidden_size"] * config["intermediate_size"]
    active = parameters - layers * (experts - config["num_experts_per_tok"]) * 3 * config["hidden_size"] * config["intermediate_size"]
    final = log[-1]
    usage_rows = "\n".join(
        f"| {l} | " + " | ".join(f"{share[l, e] * 100:.1f}" for e in range(experts)) + (f" | {share[l].max() / share[l].min():.1f}x |" if share[l].min() > 0 else " | (an expert unused) |")
        for l in range(layers))
    card = f"""# switchyard-kjv-moe

Switchyard's bundled demo model: a small Mixture-of-Experts language model in the Mixtral
architecture, trained by the project on the King James Bible so that a first command prints
readable English with no download. It is a toy: it writes plausible 17th-century biblical prose
and knows nothing else.

| | |
| --- | --- |
| architecture | `MixtralForCausalLM`: {layers} layers, hidden {config['hidden_size']}, {config['num_attention_heads']} heads / {config['num_key_value_heads']} KV heads of {config['head_dim']}, {experts} experts of {config['intermediate_size']} per layer, top-{config['num_experts_per_tok']} |
| parameters | {parameters / 1e6:.2f} M total ({expert_parameters / 1e6:.2f} M in experts), {active / 1e6:.2f} M active per token |
| weights | bf16, `model.safetensors` |
| tokenizer | {tok.get_vocab_size()}-token BPE with byte fallback (SentencePiece, converted by transformers), trained on the same text |
| context | trained on windows of {training['sequence']} tokens; `max_position_embeddings` {config['max_position_embeddings']} |

## Data

The King James Version of the Bible (1611), whose copyright has expired: public domain. The text
comes from Debian's `bible-kjv-text` package (printed by its `bible` program), so training needs no
network. Chosen because it is a large (about one million tokens), consistent body of English whose
regular style a model this small can learn to reproduce grammatically in an hour on two cores: its
samples read well. Each of the {len(chapters)} chapters is one document (`<s>` text `</s>`), verse
numbers removed; every 50th chapter ({len(held_out)}) is held out for validation.
{training['training_tokens']:,} training tokens, {training['validation_tokens']:,} validation tokens.

## Training

`python3 scripts/train_demo_model.py` (PyTorch {training['torch']}, CPU, {training['threads']} threads):
AdamW (lr 2e-3, betas 0.9/0.95, weight decay 0.1), 50 warm-up steps then a cosine decay over a
time budget, batches of {training['batch']} x {training['sequence']} tokens, gradient clipping 1.0,
Mixtral's load-balancing loss with coefficient 0.01. {training['steps']} steps,
{final['tokens'] / 1e6:.1f} M tokens, {training['seconds'] / 60:.0f} minutes. Final held-out loss
{final['valid_loss']:.3f} nats/token (perplexity {np.exp(final['valid_loss']):.1f}). The held-out loss levels off
while the training loss keeps falling: with about ten passes over the text, the model memorises
much of it, which suits a demonstration whose job is to write pleasant text.

![loss curve](loss.png)

## Expert usage per layer

Share of routed tokens (%) each expert receives on the held-out chapters, and the ratio of the
most to the least used expert. Routing is learned, so popularity is uneven: the realistic case for
Switchyard's expert placement and caching.

| layer | {' | '.join(f'e{e}' for e in range(experts))} | max/min |
| --- | {' | '.join('---:' for _ in range(experts))} | ---: |
{usage_rows}

![expert usage](expert-usage.png)

## Samples

Greedy decoding (transformers, float32):

""" + "\n\n".join(f"> {text.strip()}" for _, text in samples) + """

## Chat template

`tokenizer_config.json` carries a simple template (`Question:` / `Answer:` turns). The model was not
trained on conversations; the template exists so that chat front-ends have something to render.
"""
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write(card)
    print(card)


if __name__ == "__main__":
    main()
