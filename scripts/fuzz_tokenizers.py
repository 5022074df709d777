"""Differential fuzzing of tokenizer.json: qinterp against HF tokenizers on mutated pipelines.

Five BPE pipelines are trained (tests/python/test_tokenizers.py's _trained), their tokenizer.json
mutated (components swapped, removed or wrapped in a Sequence, options flipped, added tokens
added or changed) and loaded by both libraries. Printed per case, unless both agree or both
refuse: SILENT-ENCODE / SILENT-DECODE (both load, ids or text differ: the worst kind of bug),
BUG-EXC (qinterp raised something other than qinterp.Error), q-accepts-hf-refuses and q-refuses
(to read: an unsupported component must be refused by name). Ends with the counts.

    PYTHONPATH=build/python ~/.cache/qinterp/venv/bin/python scripts/fuzz_tokenizers.py SEED CASES

Not part of `make test` (minutes, and random); docs/tokenizers.md says what it found.
"""
import copy, json, os, random, shutil, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python"))
import tokenizers
import qinterp
from differential import Tally, attempt, compare_tokenizers
from test_tokenizers import EDGE, paper_prompts, _trained

ENUMS = {
    "prepend_scheme": ["first", "always", "never"],
    "behavior": ["Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"],
    "replacement": ["▁", "_", " ", "Ġ"],
    "unk_token": ["<unk>", None, "<|eos|>", "zz"],
    "continuing_subword_prefix": [None, "##", ""],
    "end_of_word_suffix": [None, "</w>", ""],
}
PATTERNS = [r"\s+", r"\d", r"[A-Za-z]+", r"\p{L}+|\p{N}", r" ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", "'"]
NORMS = [{"type": "Lowercase"}, {"type": "NFKC"}, {"type": "NFD"}, {"type": "NFC"}, {"type": "NFKD"},
         {"type": "Strip", "strip_left": True, "strip_right": False},
         {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
         {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
         {"type": "Prepend", "prepend": "▁"}, {"type": "StripAccents"}, {"type": "BertNormalizer", "clean_text": True,
         "handle_chinese_chars": True, "strip_accents": None, "lowercase": True}]
PRES = [{"type": "Whitespace"}, {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": True},
        {"type": "Digits", "individual_digits": False}, {"type": "Punctuation", "behavior": "Isolated"},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False},
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        {"type": "Split", "pattern": {"Regex": r"\d"}, "behavior": "Isolated", "invert": False},
        {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
        {"type": "CharDelimiterSplit", "delimiter": "a"}, {"type": "UnicodeScripts"}, {"type": "BertPreTokenizer"}]


def nodes(x, path=()):
    if isinstance(x, dict):
        yield path, x
        for k, v in x.items():
            if k in ("vocab", "merges"):
                continue
            yield from nodes(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from nodes(v, path + (i,))


def mutate(j, rng):
    j = copy.deepcopy(j)
    log = []
    for _ in range(rng.choice([1, 1, 2])):
        r = rng.random()
        if r < 0.15:  # a component replaced, removed or extended
            slot = rng.choice(["normalizer", "pre_tokenizer", "decoder", "post_processor"])
            cur = j.get(slot)
            if slot == "normalizer":
                new = rng.choice([None, rng.choice(NORMS), {"type": "Sequence", "normalizers": [x for x in [cur, rng.choice(NORMS)] if x]}])
            elif slot == "pre_tokenizer":
                new = rng.choice([None, rng.choice(PRES), {"type": "Sequence", "pretokenizers": [x for x in [rng.choice(PRES), cur] if x]}])
            elif slot == "decoder":
                new = rng.choice([None, {"type": "ByteLevel"}, {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
                                  {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
                                  {"type": "WordPiece", "prefix": "##", "cleanup": True}, {"type": "BPEDecoder", "suffix": "</w>"}])
            else:
                new = rng.choice([None, {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
                                  {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|eos|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                                   "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                                   "special_tokens": {"<|eos|>": {"id": "<|eos|>", "ids": [1], "tokens": ["<|eos|>"]}}}])
            j[slot] = new
            log.append(f"{slot}={json.dumps(new)[:80]}")
            continue
        if r < 0.3 and j.get("added_tokens") is not None:  # an added token changed or added
            at = j["added_tokens"]
            if rng.random() < 0.5 and at:
                t = rng.choice(at)
                k = rng.choice(["lstrip", "rstrip", "normalized", "single_word", "special"])
                t[k] = not t.get(k, False)
                log.append(f"added[{t['content']}].{k}={t[k]}")
            else:
                content = rng.choice(["ing", " the", "Answer", "\n", "ab", "é", "12", "▁a", "True"])
                vocab = j["model"].get("vocab", {})
                nid = (max(vocab.values()) if isinstance(vocab, dict) and vocab else 1000) + 1 + len(at)
                at.append({"id": nid, "content": content, "single_word": rng.random() < 0.3, "lstrip": rng.random() < 0.3,
                           "rstrip": rng.random() < 0.3, "normalized": rng.random() < 0.5, "special": rng.random() < 0.5})
                log.append(f"added+{json.dumps(at[-1])}")
            continue
        cands = [(p, d) for p, d in nodes(j) if any(not isinstance(v, (dict, list)) or k == "pattern" for k, v in d.items())]
        p, d = rng.choice(cands)
        keys = [k for k, v in d.items() if k not in ("id", "content", "type", "vocab", "merges", "ids", "tokens") and (not isinstance(v, (dict, list)) or k == "pattern")]
        if not keys:
            continue
        k = rng.choice(keys)
        v = d[k]
        if k == "pattern":
            new = rng.choice([{"Regex": rng.choice(PATTERNS)}, {"String": rng.choice([" ", "a", "\n"])}])
        elif k in ENUMS:
            new = rng.choice(ENUMS[k])
        elif isinstance(v, bool):
            new = not v
        elif k == "dropout":
            continue
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            new = rng.choice([0, 1, 2, None])
        elif v is None:
            new = rng.choice([True, False, "x", 0])
        else:
            new = rng.choice(["", "x", "▁", " ", None])
        d[k] = new
        log.append(f"{'.'.join(map(str, p))}.{k}={json.dumps(new)}")
    return j, log


def main():
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    texts = list(EDGE) + list(paper_prompts()[::60]) + ["a <think> b", "x<think>y", "<|bos|>start", "ＡＢＣ", "Ⅻ ﬁ", "İstanbul ΣΑΣ",
                                                      "Answer: True", "the thing ing", "ab ab\nab", "12 123 1234"]
    bases = {}
    for kind in ["gpt2", "llama3", "smollm", "metaspace", "whitespace"]:
        bases[kind] = json.loads(_trained(kind, list(paper_prompts()[::7])).to_str())
    root = tempfile.mkdtemp(prefix="tokfuzz")
    tally = Tally("hf")
    for i in range(cases):
        kind = rng.choice(list(bases))
        j, log = mutate(bases[kind], rng)
        s = json.dumps(j)
        path = os.path.join(root, "tokenizer.json")
        open(path, "w").write(s)
        def reference():
            hf = tokenizers.Tokenizer.from_str(s)
            return hf, [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]

        def qinterp_side():
            tok = qinterp.load_tokenizer(path)
            return tok, tok.encode_many(texts)

        def compare(o, t):
            (tok, ours), (hf, theirs) = o, t
            return compare_tokenizers(texts, ours, theirs, tok.decode,
                                      lambda ids: hf.decode(ids, skip_special_tokens=True), "hf", len(EDGE))

        tally.add(f"[{i}] {kind} {' | '.join(log)}", attempt(qinterp_side, True), attempt(reference, False), compare)
    shutil.rmtree(root, ignore_errors=True)
    print(tally.counts)


if __name__ == "__main__":
    main()
