#!/usr/bin/env python3
"""Trains Switchyard's bundled demo model: a small Mixtral (8 experts, top-2) on the King James
Bible, with its own SentencePiece-style tokenizer, on the CPU.

    apt-get install bible-kjv          # the text (public domain), and the program that prints it
    pip install torch transformers sentencepiece protobuf matplotlib
    python3 scripts/train_demo_model.py [--minutes 55] [--out models/switchyard-kjv-moe]
    python3 scripts/train_demo_model.py --held-out-only   # only rewrite held-out.txt

Writes held-out.txt too: the 20 chapters kept out of training (every 50th), one per paragraph, the
text `switchyard perplexity` measures the bundled model on.

Writes a Hugging Face folder (config.json, generation_config.json, model.safetensors in bf16,
tokenizer.json, tokenizer_config.json with a chat template) and a model card (README.md) with the
loss curve and the expert usage per layer.
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 4096
SEQUENCE = 256
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] | trim }}\n\n"
    "{% elif message['role'] == 'user' %}Question: {{ message['content'] | trim }}\n"
    "{% else %}Answer: {{ message['content'] | trim }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Answer:{% endif %}"
)


def kjv_chapters():
    """Every chapter as one paragraph of flowing text: verse numbers and line wraps removed."""
    text = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], check=True, capture_output=True,
                          text=True).stdout
    chapters, verses = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if m:
            verses.append(m.group(2))
        elif re.match(r"^[1-3]? ?[A-Z][A-Za-z ]+ \d+$", line):  # "Genesis 1", "1 Kings 3"
            if verses:
                chapters.append(" ".join(verses))
            verses = []
        elif verses:
            verses[-1] += " " + line
    if verses:
        chapters.append(" ".join(verses))
    return chapters


HELD_OUT_EVERY = 50


def write_held_out(chapters, folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "held-out.txt"), "w") as f:
        f.write("\n\n".join(chapters[i] for i in range(0, len(chapters), HELD_OUT_EVERY)) + "\n")


def train_tokenizer(chapters, folder):
    """A 4096-token BPE with byte fallback (SentencePiece), converted to tokenizer.json by transformers."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    work = tempfile.mkdtemp()
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(chapters))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(work, "tokenizer"), vocab_size=VOCAB, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        max_sentence_length=100000, num_threads=2, minloglevel=2)
    # add_bos_token: the post-processor puts <s> in front, as Llama's and Mistral's do.
    tok = LlamaTokenizer.from_pretrained(work, legacy=False, add_bos_token=True)
    tok.save_pretrained(folder)
    shutil.rmtree(work)
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    for key in ("is_local", "local_files_only", "name_or_path"):  # describe the local folder, not the tokenizer
        config.pop(key, None)
    # The chat template lives in tokenizer_config.json (transformers reads it from there too).
    config["chat_template"] = CHAT_TEMPLATE
    with open(path, "w") as f:
        json.dump(config, f, indent=2)
    import tokenizers
    return tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))


def batches(data, batch, generator):
    """Random windows of SEQUENCE tokens (transformers shifts the labels itself)."""
    while True:
        starts = torch.randint(0, len(data) - SEQUENCE, (batch,), generator=generator)
        yield torch.stack([data[s:s + SEQUENCE] for s in starts.tolist()])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(ROOT, "models", "switchyard-kjv-moe"))
    parser.add_argument("--minutes", type=float, default=55.0, help="training time budget")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--held-out-only", action="store_true", help="write held-out.txt and stop")
    args = parser.parse_args()
    if args.held_out_only:
        write_held_out(kjv_chapters(), args.out)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import GenerationConfig, MixtralConfig, MixtralForCausalLM

    os.makedirs(args.out, exist_ok=True)
    chapters = kjv_chapters()
    tok = train_tokenizer(chapters, args.out)
    held_out = set(range(0, len(chapters), HELD_OUT_EVERY))  # 2% of chapters for validation
    write_held_out(chapters, args.out)
    def encode(indices):
        ids = []
        for i in indices:
            ids += tok.encode(chapters[i]).ids + [2]  # <s> (from the post-processor) chapter </s>
        return torch.tensor(ids, dtype=torch.long)
    train = encode([i for i in range(len(chapters)) if i not in held_out])
    valid = encode(sorted(held_out))
    print(f"{len(chapters)} chapters, {len(train)} training tokens, {len(valid)} validation tokens")

    config = MixtralConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, head_dim=32, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=None, output_router_logits=True, router_aux_loss_coef=0.01,
        initializer_range=0.02)
    model = MixtralForCausalLM(config)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters / 1e6:.2f} M parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(1)
    stream = batches(train, args.batch, generator)
    budget = args.minutes * 60
    start = time.time()
    log = []
    step = 0
    warmup = 50

    def evaluate():
        model.eval()
        losses = []
        with torch.no_grad():
            # Every window of the held-out text once; transformers shifts the labels itself.
            for s in range(0, len(valid) - SEQUENCE, SEQUENCE):
                x = valid[s:s + SEQUENCE][None]
                losses.append(model(x, labels=x).loss.item())
        model.train()
        return sum(losses) / len(losses)

    # A cosine schedule over the time budget (the step count depends on the machine).
    model.train()
    while True:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        progress = elapsed / budget
        lr = 2e-3 * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = next(stream)
        out = model(x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % 25 == 0 or step == 1:
            entry = dict(step=step, minutes=round(elapsed / 60, 2), tokens=step * args.batch * SEQUENCE,
                         train_loss=round(out.loss.item(), 4), lr=lr)
            if step % 100 == 0:
                entry["valid_loss"] = round(evaluate(), 4)
            log.append(entry)
            print(json.dumps(entry), flush=True)
    final_valid = evaluate()
    log.append(dict(step=step, minutes=round((time.time() - start) / 60, 2), tokens=step * args.batch * SEQUENCE,
                    valid_loss=round(final_valid, 4)))
    print(f"done: {step} steps, validation loss {final_valid:.3f}")

    # Save in bf16, as real releases ship.
    model.config.output_router_logits = False
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2)
    model.save_pretrained(args.out)
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(dict(parameters=parameters, steps=step, batch=args.batch, sequence=SEQUENCE, log=log,
                       training_tokens=len(train), validation_tokens=len(valid), seconds=time.time() - start,
                       torch=torch.__version__, threads=args.threads), f, indent=1)
    subprocess.run(["python3", os.path.join(ROOT, "scripts", "demo_model_card.py"), args.out], check=True)


if __name__ == "__main__":
    main()
