#!/usr/bin/env python3
"""transformers' and NumPy's side of `switchyard perplexity`, for the tests (they never run Python).

    python3 scripts/perplexity_reference.py build
        Writes Tests/EvaluationTests/Fixtures/: perplexity.json (the bundled model's perplexity on
        its held-out text, computed by transformers in float32 for a few context sizes, cut as
        llama-perplexity cuts a text) and kld/ (random logits of a base and of a perturbed model, the
        tokens they score, and NumPy's KL-divergence statistics over them).

    python3 scripts/perplexity_reference.py check --switchyard .build/release/switchyard
        The acceptance check: `switchyard perplexity --precision f32` on the whole held-out text at
        --ctx-size 512 against transformers (1e-4 relative).

Needs: pip install torch transformers tokenizers numpy
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODEL = os.path.join(ROOT, "models", "switchyard-kjv-moe")
TEXT = os.path.join(MODEL, "held-out.txt")
OUT = os.path.join(ROOT, "Tests", "EvaluationTests", "Fixtures")


def tokens_of(text):
    """The tokenizer's prefix (BOS), then the text without special tokens: what llama.cpp's
    tokenize(text, add_special=true) gives for a SentencePiece-style tokenizer."""
    import tokenizers
    tok = tokenizers.Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    with_special = tok.encode("x").ids
    plain = tok.encode("x", add_special_tokens=False).ids
    prefix = with_special[:len(with_special) - len(plain)]
    return prefix, prefix + tok.encode(text, add_special_tokens=False).ids


def transformers_perplexity(context, chunk_limit=None):
    """Windows of `context` tokens, the prefix in place of each window's first tokens, the last
    context - 1 - context // 2 positions scored: mean -log p in float64 of float32 log-softmax."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    model.eval()
    prefix, tokens = tokens_of(open(TEXT, encoding="utf-8").read())
    chunks = len(tokens) // context
    if chunk_limit:
        chunks = min(chunks, chunk_limit)
    first = context // 2
    nll = []
    with torch.no_grad():
        for c in range(chunks):
            window = list(tokens[c * context:(c + 1) * context])
            window[:len(prefix)] = prefix
            logits = model(torch.tensor([window])).logits[0].float()
            logp = torch.log_softmax(logits, dim=-1)
            for j in range(first, context - 1):
                nll.append(-float(logp[j, tokens[c * context + j + 1]]))
    nll = np.array(nll, dtype=np.float64)
    return dict(context=context, chunks=chunks, text_tokens=len(tokens), scored=len(nll),
                mean_nll=float(nll.mean()), perplexity=float(np.exp(nll.mean())))


def kld_fixture(folder, vocab=96, context=40, chunks=8, seed=7):
    """A base's and a model's logits over the scored rows of `chunks` windows, and the statistics
    llama-perplexity's --kl-divergence reports, computed here in float64 from the exact
    log-softmax of both."""
    rng = np.random.default_rng(seed)
    scored = context - 1 - context // 2
    tokens = rng.integers(0, vocab, size=chunks * context)
    rows = chunks * scored
    base = (rng.standard_normal((rows, vocab)) * 2.0).astype(np.float32)
    model = (base + rng.standard_normal((rows, vocab)) * 0.08).astype(np.float32)
    first = context // 2
    targets = np.array([tokens[c * context + first + j + 1] for c in range(chunks) for j in range(scored)])

    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(axis=1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))

    lb, lq = log_softmax(base), log_softmax(model)
    kld = (np.exp(lb) * (lb - lq)).sum(axis=1)
    nll_q = -lq[np.arange(rows), targets]
    nll_b = -lb[np.arange(rows), targets]
    dp = np.exp(-nll_q) - np.exp(-nll_b)
    same_top = float((base.argmax(axis=1) == model.argmax(axis=1)).mean())
    n = rows

    def mean_err(v):
        return float(v.mean()), float(np.sqrt(max(0.0, (v * v).mean() - v.mean() ** 2) / (n - 1)))

    def pct(v, f):  # linear interpolation between the nearest ranks
        return float(np.quantile(v, f, method="linear"))

    cov = ((nll_q * nll_b).mean() - nll_q.mean() * nll_b.mean()) / (n - 1)
    eq, eb = mean_err(nll_q)[1], mean_err(nll_b)[1]
    expected = dict(
        vocab=vocab, context=context, chunks=chunks, tokens=[int(t) for t in tokens],
        perplexity=float(np.exp(nll_q.mean())), base_perplexity=float(np.exp(nll_b.mean())),
        log_ratio=float(nll_q.mean() - nll_b.mean()), log_ratio_uncertainty=float(np.sqrt(eq * eq + eb * eb - 2 * cov)),
        kld_mean=mean_err(kld)[0], kld_uncertainty=mean_err(kld)[1],
        kld_percentiles={str(f): pct(kld, f) for f in [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0]},
        delta_p_mean=mean_err(dp)[0], delta_p_rms=float(np.sqrt((dp * dp).mean())),
        same_top=same_top, same_top_uncertainty=float(np.sqrt(same_top * (1 - same_top) / (n - 1))),
    )
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "base_logits.npy"), base)
    np.save(os.path.join(folder, "model_logits.npy"), model)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["build", "check"])
    parser.add_argument("--switchyard")
    args = parser.parse_args()
    if args.mode == "build":
        os.makedirs(OUT, exist_ok=True)
        results = [transformers_perplexity(64, 4), transformers_perplexity(128, 2)]
        with open(os.path.join(OUT, "perplexity.json"), "w") as f:
            json.dump(results, f, indent=1)
        kld_fixture(os.path.join(OUT, "kld"))
        print(json.dumps(results, indent=1))
        return
    if not args.switchyard:
        sys.exit("check needs --switchyard PATH")
    reference = transformers_perplexity(512)
    out = subprocess.run([args.switchyard, "perplexity", "--model", MODEL, "-f", TEXT, "--ctx-size", "512", "--precision", "f32",
                          "--json"], check=True, capture_output=True, text=True).stdout
    got = json.loads(out)
    error = abs(got["perplexity"] - reference["perplexity"]) / reference["perplexity"]
    print(f"transformers: PPL {reference['perplexity']:.6f} over {reference['scored']} tokens; switchyard: "
          f"{got['perplexity']:.6f} over {got['scored_tokens']}; relative error {error:.2e}")
    if error > 1e-4 or got["scored_tokens"] != reference["scored"]:
        sys.exit("FAIL")
    print("OK")


if __name__ == "__main__":
    main()
