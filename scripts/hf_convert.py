"""Converts a vocabulary-only GGUF from ../shared/data/vocab into a Hugging Face tokenizer folder
(tokenizer.json written compactly, tokenizer_config.json), as transformers converts it."""
import json
import os
import shutil
import tempfile

SHARED_VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "vocab")


def convert_gguf_tokenizer(gguf, out_dir):
    from transformers import AutoTokenizer
    os.makedirs(out_dir, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(SHARED_VOCAB, gguf_file=gguf)
    tmp = tempfile.mkdtemp()
    tok.save_pretrained(tmp)
    with open(os.path.join(tmp, "tokenizer.json"), encoding="utf-8") as f:
        data = json.load(f)
    # Same content as transformers writes, without indentation: half the size in the repository.
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
    with open(os.path.join(tmp, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    for key in ("is_local", "local_files_only"):  # describe the local folder, not the tokenizer
        config.pop(key, None)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
    shutil.rmtree(tmp)
