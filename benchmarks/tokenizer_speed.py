#!/usr/bin/env python3
"""Tokenizer speed: 1 MB of English and 1 MB of mixed-script text through Switchyard's tokenizer
(release build) and Hugging Face `tokenizers`, on the same tokenizer.json files.

    swift build -c release && python3 benchmarks/tokenizer_speed.py

English is the King James Bible (Debian's bible-kjv; a public-domain stand-in is generated when it
is missing); mixed-script text is drawn from CJK, Cyrillic, Arabic, Greek, Devanagari, Hangul,
emoji, combining marks, digits and code. Switchyard's figure is the `switchyard tokenize --file`
time minus its time on an empty file (process start and loading tokenizer.json), best of 3.
"""
import json
import os
import random
import shutil
import subprocess
import tempfile
import time

import tokenizers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, ".build", "release", "switchyard")
FIXTURES = os.path.join(ROOT, "fixtures", "tokenizers")


def texts(work):
    try:
        english = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        rng = random.Random(1)
        words = "the of and to in that he was it for his with as I on be at by had are but from or have an they which one you were her all she there would their we him been has when who will more no if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three".split()
        english = " ".join(rng.choice(words) for _ in range(250_000))
    english = english.encode()[:1_000_000].decode(errors="ignore")
    rng = random.Random(3)
    pieces = [" The quick brown fox", " jumps over", " 日本語のテキストです。", " 中文和English混合", " Привет, мир!", " مرحبا بالعالم",
              " 🦙🚀👍🏽", " e\u0301le\u0300ve", " café naïve", " 1234567890", "\n", "   ", "\tdef f(x): return x * 2", " Ελληνικά",
              " हिन्दी", " 한국어 텍스트", " ไทย"]
    mixed = ""
    while len(mixed.encode()) < 1_000_000:
        mixed += rng.choice(pieces)
    paths = {}
    for name, text in (("english", english), ("mixed", mixed)):
        paths[name] = os.path.join(work, name + ".txt")
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write(text)
    return paths


def tokenizer_folders(work):
    folders = {"llama-spm (Mixtral, Llama 2)": os.path.join(FIXTURES, "llama-spm")}
    variants = json.load(open(os.path.join(FIXTURES, "variants.json")))
    for name, label in (("qwen2", "Qwen2/3 pipeline"), ("llama3", "Llama 3 pipeline")):
        base = json.load(open(os.path.join(FIXTURES, variants[name]["base"], "tokenizer.json")))
        for key, value in variants[name].items():
            if key == "base":
                continue
            if key == "model":
                base["model"].update(value)
            elif key == "added_tokens":
                base["added_tokens"] = base["added_tokens"] + value
            else:
                base[key] = value
        folder = os.path.join(work, name)
        os.makedirs(folder)
        with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(base, f, ensure_ascii=False)
        folders[label] = folder
    return folders


def switchyard_seconds(folder, path, empty):
    def run(p):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([BINARY, "tokenize", "--model", folder, "--file", p], check=True, stdout=subprocess.DEVNULL)
            best = min(best, time.perf_counter() - start)
        return best
    return run(path) - run(empty)


def hf_seconds(folder, path):
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    text = open(path, encoding="utf-8").read()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        ids = tok.encode(text).ids
        best = min(best, time.perf_counter() - start)
    return best, len(ids)


def main():
    work = tempfile.mkdtemp()
    paths = texts(work)
    empty = os.path.join(work, "empty.txt")
    open(empty, "w").close()
    print(f"| tokenizer | text | tokens | Switchyard s | HF tokenizers {tokenizers.__version__} s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for label, folder in tokenizer_folders(work).items():
        for name, path in paths.items():
            hf, count = hf_seconds(folder, path)
            ours = switchyard_seconds(folder, path, empty)
            print(f"| {label} | 1 MB {name} | {count:,} | {ours:.2f} | {hf:.2f} |")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
