"""Tokenizer throughput against the reference libraries on the same texts, single thread, one run.

Texts: every prompt of the four paper CSVs (BoolQ, PIQA, toxicity, HellaSwag: 21,838 prompts).
Each side encodes the whole list in one call (HF tokenizers: Tokenizer.encode_batch with
RAYON_NUM_THREADS=1; sentencepiece: encode(list); qinterp: Tokenizer.encode_many, which releases
the GIL and loops in C++). Every timed pass uses a freshly loaded tokenizer (loading not timed),
so both sides start with empty word caches, as a real one-pass run does; best of --repeat. The
ids are checked to be identical before any time is reported.

    python bench/tokenize_vs_hf.py              # prints one row per tokenizer and the ratios
    python bench/tokenize_vs_hf.py --repeat 5

(Not named tokenize.py: that would shadow the standard library's tokenize module.)
"""
import argparse
import csv
import os
import pathlib
import sys
import tempfile
import time

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers is imported: one thread, as qinterp
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("QINTERP_SHARED", ROOT.parent / "shared"))
MODELS = pathlib.Path(os.environ.get("QINTERP_MODELS", pathlib.Path.home() / ".cache/qinterp/models"))
sys.path.insert(0, str(ROOT / "build" / "python"))

import qinterp  # noqa: E402
import sentencepiece as spm  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402


def prompts():
    texts = []
    for name in ("boolq", "piqa", "toxicity", "hellaswag"):
        with open(SHARED / "datasets/paper1" / f"{name}.csv", newline="") as f:
            texts += [row["prompt"] for row in csv.DictReader(f)]
    return texts


def best(load, encode, repeat):
    """(ids, seconds): the fastest of `repeat` passes, each with a fresh tokenizer from load()."""
    out, times = None, []
    for _ in range(repeat):
        tok = load()
        t0 = time.perf_counter()
        out = encode(tok)
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    texts = prompts()
    tmp = pathlib.Path(tempfile.mkdtemp())
    l2_model = SHARED / "fixtures/llama2-tokenizer/tokenizer.model"
    (tmp / "l2src").mkdir()
    (tmp / "l2src/tokenizer.model").write_bytes(l2_model.read_bytes())
    transformers.LlamaTokenizer.from_pretrained(str(tmp / "l2src")).save_pretrained(str(tmp / "l2json"))
    gguf = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp / "smoljson"))

    cases = [("Llama-2 .model", "sentencepiece", lambda: spm.SentencePieceProcessor(model_file=str(l2_model)),
              lambda sp: sp.encode(texts), l2_model)]
    for name, path, mine in [("Llama-2 tokenizer.json", tmp / "l2json/tokenizer.json", tmp / "l2json/tokenizer.json"),
                             ("SmolLM2 (GGUF vocab)", tmp / "smoljson/tokenizer.json", gguf)]:
        cases.append((name, "HF tokenizers", lambda path=path: tokenizers.Tokenizer.from_file(str(path)),
                      lambda hf: [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)], mine))

    print(f"{len(texts)} prompts, {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB of UTF-8, one thread, best of {args.repeat}")
    print(f"{'tokenizer':<24} {'peer':<14} {'tokens':>10} {'peer tok/s':>12} {'qinterp tok/s':>14} {'ratio':>6}")
    for name, peer, peer_load, peer_encode, mine in cases:
        ref, t_peer = best(peer_load, peer_encode, args.repeat)
        ours, t_ours = best(lambda mine=mine: qinterp.load_tokenizer(mine),
                            lambda tok: tok.encode_many(texts, False, False), args.repeat)
        if ours != ref:
            bad = next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)
            raise SystemExit(f"{name}: ids differ from {peer} at prompt {bad}: {texts[bad][:80]!r}")
        n = sum(len(r) for r in ref)
        print(f"{name:<24} {peer:<14} {n:>10,} {n / t_peer:>12,.0f} {n / t_ours:>14,.0f} {t_peer / t_ours:>5.2f}x")


if __name__ == "__main__":
    main()
