"""qinterp's tokenizers against the reference libraries, id for id, on every prompt of the four
paper CSVs plus edge cases: sentencepiece (Llama-2 .model), HF tokenizers (tokenizer.json files
written by transformers and trained here), transformers' GGUF tokenizer (SmolLM2)."""
import csv
import functools

import pytest
import torch

import qinterp
from conftest import SHARED, SMOLLM2, STORIES

import sentencepiece as spm
import tokenizers

LLAMA2_MODEL = SHARED / "fixtures/llama2-tokenizer/tokenizer.model"

EDGE = [
    "", " ", "  ", "a", " a", "a ", "  hello  world  ", "\n", "a\nb\n\n", "\r\n", "\t tab\t", "x\t\ty",
    "😀 emoji 👍🏽 family 👨‍👩‍👧", "中文字符测试，标点。", "日本語のテキスト", "café naïve Ångström Straße",
    "e\u0301 (combining accent)", "12345 3.14159 1,000,000 ٣٤٥", "\x00\x01\x7f control", "don't I'll we've DON'T",
    "<s> </s> <unk> <|endoftext|>", "▁already▁metaspace", "ÿ \u200b zero-width \u00a0 nbsp \u3000 ideographic",
    "Hello   \n\n  world", "   ", "\U0010FFFF \uFFFD", "a" * 300, "🙂" * 20, "x" + " " * 40 + "y",
]


@functools.lru_cache(maxsize=None)
def paper_prompts():
    texts = []
    for name in ("boolq", "piqa", "toxicity", "hellaswag"):
        with open(SHARED / "datasets/paper1" / f"{name}.csv", newline="") as f:
            texts += [row["prompt"] for row in csv.DictReader(f)]
    assert len(texts) == 10000 + 1838 + 5000 + 5000
    return tuple(texts)


def corpus():
    return list(EDGE) + list(paper_prompts())


def assert_same_ids(ours, theirs, texts, what):
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{what}: {len(bad)} of {len(texts)} texts differ; first: {bad[0][0][:120]!r}\n{bad[0][1][:40]}\n{bad[0][2][:40]}"


# --- SentencePiece .model vs the sentencepiece package --------------------------------------------

@pytest.fixture(scope="module")
def llama2_sp():
    return spm.SentencePieceProcessor(model_file=str(LLAMA2_MODEL))


def test_sentencepiece_model_matches_sentencepiece(llama2_sp):
    tok = qinterp.load_tokenizer(LLAMA2_MODEL)
    assert tok.kind == "sentencepiece" and tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (1, 2, 0, -1)
    texts = corpus()
    assert_same_ids(tok.encode_many(texts, False, False), llama2_sp.encode(texts), texts, "Llama-2 .model")
    assert tok.encode("Hello") == [1] + llama2_sp.encode("Hello")
    # decode(encode(x)) == x wherever sentencepiece round-trips, and equal to its decode everywhere.
    for t in texts[:len(EDGE)] + texts[len(EDGE)::50]:
        ids = llama2_sp.encode(t)
        assert tok.decode(ids) == llama2_sp.decode(ids), repr(t)
        assert tok.decode([1] + ids + [2]) == llama2_sp.decode([1] + ids + [2])


def _sp_variant(tmp_path, trainer=None, normalizer=None, pieces=None):
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(LLAMA2_MODEL.read_bytes())
    for k, v in (trainer or {}).items():
        setattr(m.trainer_spec, k, v)
    for k, v in (normalizer or {}).items():
        setattr(m.normalizer_spec, k, v)
    for i, t in (pieces or {}).items():
        m.pieces[i].type = t
    path = tmp_path / "tokenizer.model"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("trainer,normalizer", [
    ({}, dict(remove_extra_whitespaces=True)),   # every leading "▁" comes off while the text is empty
    ({}, dict(escape_whitespaces=False, add_dummy_prefix=False)),  # "▁" decodes as " " all the same
    (dict(unk_surface="<?>", byte_fallback=False), {}),            # the file's unk surface
], ids=["remove_extra_whitespaces", "no_escape", "unk_surface"])
def test_sentencepiece_settings_decode_like_sentencepiece(tmp_path, trainer, normalizer):
    """Found by scripts/fuzz_sentencepiece.py: these decoded otherwise than sentencepiece."""
    pieces = {i: 1 for i in range(3, 259)} if trainer.get("byte_fallback") is False else None  # bytes as plain pieces
    path = _sp_variant(tmp_path, trainer, normalizer, pieces)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = qinterp.load_tokenizer(path)
    texts = corpus()[::40] + list(EDGE) + ["  two  spaces ", "\u2581already", "\u2581\u2581x", "日本語 ☃ 𝔘"]
    assert_same_ids(tok.encode_many(texts, False, False), sp.encode(texts), texts, str(normalizer or trainer))
    for t in texts:
        ids = sp.encode(t)
        assert tok.decode(ids) == sp.decode(ids), repr(t)
        assert tok.decode([1] + ids + [2]) == sp.decode([1] + ids + [2]), repr(t)
    # byte pieces that are not UTF-8 decode as U+FFFD each, as sentencepiece's
    for ids in ([3 + 0xE4, 3 + 0xB8], [3 + 0xFF, 3 + 0x41], [3 + 0xE4, 3 + 0xB8, 3 + 0xAD]):
        if tok.vocab_size > 259 and pieces is None:
            assert tok.decode(ids) == sp.decode(ids), ids


def test_sentencepiece_files_sentencepiece_refuses_are_refused(tmp_path):
    with pytest.raises(qinterp.Error, match="more than one piece has the unknown type"):
        qinterp.load_tokenizer(_sp_variant(tmp_path, pieces={500: 2}))
    with pytest.raises(qinterp.Error, match="byte_fallback is off"):
        qinterp.load_tokenizer(_sp_variant(tmp_path, trainer=dict(byte_fallback=False)))


def test_sentencepiece_malformed_utf8_like_sentencepiece(llama2_sp):
    tok = qinterp.load_tokenizer(LLAMA2_MODEL)
    for raw in [b"a\xffb", b"\xe4\xb8", b"\xc3", b"ok\xed\xa0\x80surrogate", b"\xf0\x9f\x98", b"\x80\x80x", b"\xc0\xafoverlong"]:
        assert tok.tokenize(raw) == llama2_sp.encode(raw), raw


# --- tokenizer.json written by HF tokenizers ------------------------------------------------------

@pytest.fixture(scope="module")
def llama2_json(tmp_path_factory):
    """The Llama-2 vocabulary as transformers converts it to a fast tokenizer (tokenizer.json)."""
    import transformers
    src = tmp_path_factory.mktemp("llama2_src")
    (src / "tokenizer.model").write_bytes(LLAMA2_MODEL.read_bytes())
    out = tmp_path_factory.mktemp("llama2_json")
    transformers.LlamaTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


def test_llama2_tokenizer_json_matches_hf_tokenizers(llama2_json):
    hf = tokenizers.Tokenizer.from_file(str(llama2_json / "tokenizer.json"))
    tok = qinterp.load_tokenizer(llama2_json / "tokenizer.json")
    assert tok.kind == "bpe" and tok.vocab_size == 32000
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)  # from tokenizer_config.json beside it
    texts = corpus()
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert_same_ids(tok.encode_many(texts, False, False), theirs, texts, "Llama-2 tokenizer.json")
    # Metaspace with prepend_scheme "first" and special tokens inside the text.
    for t in ["<s>Hello</s> world", " Hello", "Hi <unk> there"]:
        assert tok.tokenize(t) == hf.encode(t, add_special_tokens=False).ids, t
    for t in texts[:len(EDGE)] + texts[len(EDGE)::100]:
        ids = hf.encode(t, add_special_tokens=False).ids
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), repr(t)
    # The directory form finds tokenizer.json first.
    assert qinterp.load_tokenizer(llama2_json).kind == "bpe"


def _trained(kind, texts):
    """A small BPE trained by HF tokenizers in one of the pipelines real models use."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
    specials = ["<|bos|>", "<|eos|>", "<unk>"]
    if kind == "gpt2":  # GPT-2: ByteLevel with its regex and a prefix space
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "llama3":  # Llama-3 / Qwen2 style: NFC, regex Split, ByteLevel without regex, BOS template
        tok = tokenizers.Tokenizer(models.BPE(ignore_merges=True))
        tok.normalizer = normalizers.NFC()
        split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "smollm":  # SmolLM: digits split one by one before ByteLevel
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif kind == "metaspace":  # SentencePiece-style words, NFKC + lowercase, unknown characters fused
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
        alphabet = []
    else:  # whitespace words with an unk token
        tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if kind == "llama3":
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    tok.add_tokens([tokenizers.AddedToken("<think>", lstrip=True, rstrip=True)])
    return tok


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "smollm", "metaspace", "whitespace"])
def test_trained_tokenizer_json_matches_hf_tokenizers(kind, tmp_path):
    texts = corpus()
    hf = _trained(kind, list(paper_prompts()[::7]))
    hf.save(str(tmp_path / "tokenizer.json"))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok = qinterp.load_tokenizer(tmp_path / "tokenizer.json")
    extra = ["a <think> b", "x<think>y", "<|bos|>start", "ＡＢＣ full-width", "Ⅻ ﬁ ligature", "İstanbul ΣΑΣ"]
    texts = texts + extra
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    assert_same_ids(tok.encode_many(texts), theirs, texts, f"trained {kind}")
    if kind != "whitespace":  # Whitespace drops the spaces, so there is nothing to round-trip
        for t in texts[:len(EDGE)] + texts[len(EDGE)::200] + extra:
            ids = hf.encode(t).ids
            assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), (kind, t)


def _edit_added_ids(j):  # ids the file gives that tokenizers does not: a content already in the vocabulary, a gap
    j["added_tokens"] += [dict(j["added_tokens"][-1], id=9000, content="the", special=False, normalized=True),
                          dict(j["added_tokens"][-1], id=7777, content="Answer:", special=True, normalized=False)]


def _edit_prepend(j):  # a normalized added token is matched as its content normalized: "▁<think>"
    j["normalizer"] = {"type": "Prepend", "prepend": "\u2581"}
    j["added_tokens"] += [dict(j["added_tokens"][-1], id=3004, content="ab", normalized=True, lstrip=False, rstrip=False)]


def _edit_single_word(j):  # word boundaries are Unicode \w; a match inside a word is passed over whole
    j["added_tokens"] += [dict(j["added_tokens"][-1], id=3004, content="on", single_word=True, lstrip=False, rstrip=False),
                          dict(j["added_tokens"][-1], id=3005, content="o", single_word=True, lstrip=False, rstrip=False)]


def _edit_no_decoder(j):  # without a decoder tokenizers joins the tokens with spaces
    j["decoder"] = None


def _edit_lowercase(j):  # tokenizers lowercases character by character: no final sigma
    j["normalizer"] = {"type": "Lowercase"}


def _edit_rstrip(j):  # tokenizers looks for the next added token from the end of the match: "\n\n" is two
    j["added_tokens"] += [dict(j["added_tokens"][-1], id=3004, content="\n", special=False, normalized=False,
                               lstrip=False, rstrip=True)]


def _edit_special_normalized(j):  # "True" normalized to "true" is no longer special when decoding
    j["added_tokens"] += [dict(j["added_tokens"][-1], id=3004, content="True", special=True, normalized=True,
                               lstrip=True, rstrip=False)]


def _edit_fuse_unk(j):  # one unk per Whitespace piece: Rust's \w has the joiner U+200D, not "²"
    j["model"]["fuse_unk"] = True


@pytest.mark.parametrize("kind,edit", [("gpt2", _edit_added_ids), ("smollm", _edit_prepend), ("gpt2", _edit_single_word),
                                       ("smollm", _edit_no_decoder), ("smollm", _edit_lowercase), ("whitespace", _edit_rstrip),
                                       ("metaspace", _edit_special_normalized), ("whitespace", _edit_fuse_unk)],
                         ids=["added_ids", "prepend", "single_word", "no_decoder", "lowercase", "rstrip",
                              "special_normalized", "whitespace_classes"])
def test_tokenizer_json_rules_found_by_differential_fuzzing(kind, edit, tmp_path):
    """Each edit made qinterp's ids or text differ from tokenizers' (scripts/fuzz_tokenizers.py)."""
    import json
    j = json.loads(_trained(kind, list(paper_prompts()[::7])).to_str())
    edit(j)
    (tmp_path / "tokenizer.json").write_text(json.dumps(j))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok = qinterp.load_tokenizer(tmp_path / "tokenizer.json")
    extra = ["Answer: the theme", "a <think> b", "ab abc xab", "on o one—on on，o «on» on_ é-on 中on", "ΣΑΣ ΟΔΟΣ. Σ",
             "İstanbul", "the Answer:", "a\nb\n\n", "x \n \n\n  y\n", "Answer: True", "x² ½ 3¾ a\u0085b",
             "family 👨\u200d👩\u200d👧 ok"]
    texts = list(EDGE) + list(paper_prompts()[::50]) + extra
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=True)]
    assert_same_ids(tok.encode_many(texts), theirs, texts, f"{kind} {edit.__name__}")
    assert tok.vocab_size == hf.get_vocab_size()
    for t, ids in zip(texts, theirs):
        if t in extra or texts.index(t) % 20 == 0:
            assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), (edit.__name__, t)


def test_empty_patterns_are_refused(tmp_path):
    """An empty Split or Replace pattern: tokenizers cuts or rewrites between every character, qinterp
    ran it as no pattern at all; refused by name."""
    import json
    base = json.loads(_trained("llama3", list(paper_prompts()[::50])).to_str())
    for where, edit in [("pre_tokenizer", {"type": "Split", "pattern": {"String": ""}, "behavior": "Isolated", "invert": False}),
                        ("normalizer", {"type": "Replace", "pattern": {"String": ""}, "content": "x"})]:
        (tmp_path / "tokenizer.json").write_text(json.dumps(dict(base, **{where: edit})))
        with pytest.raises(qinterp.Error, match="empty pattern"):
            qinterp.load_tokenizer(tmp_path / "tokenizer.json")


# --- GGUF vocabularies ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_hf():
    import transformers
    return transformers.AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)


def test_smollm2_gguf_matches_transformers(smollm2_hf):
    tok = qinterp.load_tokenizer(SMOLLM2)
    assert tok.kind == "bpe" and tok.vocab_size == 49152
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (smollm2_hf.bos_token_id, smollm2_hf.eos_token_id,
                                                    smollm2_hf.pad_token_id)
    assert tok.add_bos_default is False
    texts = corpus() + ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>"]
    theirs = smollm2_hf(texts, add_special_tokens=False)["input_ids"]
    assert_same_ids(tok.encode_many(texts), theirs, texts, "SmolLM2 GGUF")
    for t, ids in zip(texts, theirs):
        ref = smollm2_hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids) == ref, repr(t)
        if ref == t:
            assert tok.decode(tok.encode(t)) == t


def test_smollm2_tokenizer_json_saved_by_transformers(smollm2_hf, tmp_path):
    smollm2_hf.save_pretrained(str(tmp_path))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok = qinterp.load_tokenizer(tmp_path)
    texts = corpus()[::3]
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert_same_ids(tok.encode_many(texts, False, False), theirs, texts, "SmolLM2 tokenizer.json")


def test_gguf_llama_vocabulary_matches_sentencepiece(llama2_sp, tmp_path):
    """A GGUF carrying the Llama-2 SentencePiece vocabulary ("llama"), written with gguf-py."""
    import gguf
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    m.ParseFromString(LLAMA2_MODEL.read_bytes())
    w = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece.encode() for p in m.pieces])
    w.add_token_scores([p.score for p in m.pieces])
    w.add_token_types([p.type for p in m.pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = qinterp.load_tokenizer(tmp_path / "llama.gguf")
    assert tok.kind == "sentencepiece" and tok.add_bos_default
    texts = corpus()[::4]
    assert_same_ids(tok.encode_many(texts, False, False), llama2_sp.encode(texts), texts, "GGUF llama")
    assert tok.encode("Hello world") == [1, 15043, 3186]


def test_stories260k_tokenizer(stories_tok):
    assert stories_tok.encode("Once upon a time") == [1, 403, 407, 261, 378]
    assert stories_tok.kind == "llama2c" and stories_tok.add_bos_default


# --- batches, errors -----------------------------------------------------------------------------

def test_encode_batch_left_pads_with_mask():
    tok = qinterp.load_tokenizer(SMOLLM2)
    texts = ["Once upon a time", "Hi", "", "A longer sentence with more tokens in it."]
    ids, mask = qinterp.encode_batch(tok, texts)
    rows = [tok.encode(t) for t in texts]
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (4, max(len(r) for r in rows))
    for i, r in enumerate(rows):
        assert mask[i].sum().item() == len(r)
        assert ids[i, ids.shape[1] - len(r):].tolist() == r
        assert (ids[i, :ids.shape[1] - len(r)] == tok.pad_id).all()
        assert not mask[i, :ids.shape[1] - len(r)].any()
    ids2, _ = tok.encode_batch(texts, bos=True, pad_id=0)
    assert ids2[0, -len(rows[0]) - 1].item() == tok.bos_id


def test_asking_for_a_missing_bos_is_an_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"x": 0}, "merges": []}}')
    tok = qinterp.load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.bos_id == -1 and tok.encode("xx") == [0, 0]
    with pytest.raises(qinterp.Error, match="BOS"):
        qinterp.encode_batch(tok, ["x"], bos=True)


def test_malformed_files_raise_errors(tmp_path):
    cases = {
        "junk.json": (b"\x00\x01 not json", "not valid JSON"),
        "nomodel.json": (b"{}", 'missing "model"'),
        "merge.json": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}', "outside the vocabulary"),
        "unigram.json": (b'{"model": {"type": "Unigram", "vocab": []}}', "Unigram"),
        "trunc.model": (LLAMA2_MODEL.read_bytes()[:1000], "malformed SentencePiece model"),
        "junk.model": (b"\xff" * 100, "malformed"),
        "junk.gguf": (b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, "junk.gguf"),
        "junk.bin": (b"\x01\x00", "junk.bin"),
        # the JSON parser quotes what it last read, here a byte that is not UTF-8: the message must
        # still reach Python as qinterp.Error (it was a UnicodeDecodeError), the byte as \xff
        "utf8.json": (b'{"model": {"type": "BPE",\n  \xff', "\\xff"),
        # one damaged id must not ask for a table of 2^40 entries (it raised MemoryError)
        "bigid.json": (b'{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, '
                       b'"added_tokens": [{"id": 1099511627776, "content": "x"}]}', "far beyond"),
        "bigvocab.json": (b'{"model": {"type": "BPE", "vocab": {"a": 2000000000}, "merges": []}}', "far beyond"),
    }
    for name, (data, msg) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(qinterp.Error) as e:
            qinterp.load_tokenizer(tmp_path / name)
        assert name in str(e.value) and msg in str(e.value), (name, str(e.value))
    with pytest.raises(qinterp.Error, match="no such file"):
        qinterp.load_tokenizer(tmp_path / "missing.json")
    # A GGUF with no tokenizer metadata.
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "notok.gguf"), "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(qinterp.Error, match="notok.gguf.*no tokenizer.ggml.model"):
        qinterp.load_tokenizer(tmp_path / "notok.gguf")


def test_sentencepiece_piece_with_a_space_after_one_character_loads(tmp_path):
    # A piece whose metaspace starts one byte in ("a▁bc", made from the first "▁▁" of the Llama-2
    # model): the word-splitting check compared before the start of the piece and raised
    # IndexError (found by fuzzing).
    data = LLAMA2_MODEL.read_bytes()
    assert b"\xe2\x96\x81\xe2\x96\x81" in data
    (tmp_path / "odd.model").write_bytes(data.replace(b"\xe2\x96\x81\xe2\x96\x81", b"a\xe2\x96\x81bc", 1))
    tok = qinterp.load_tokenizer(tmp_path / "odd.model")
    ids = tok.encode("Once upon a time")
    assert ids and tok.decode(ids).endswith("Once upon a time")
