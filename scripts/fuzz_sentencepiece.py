"""Differential fuzzing of SentencePiece .model files: qinterp against the sentencepiece package.

The Llama-2 tokenizer.model (../shared/fixtures) gets trainer and normalizer flags flipped, piece
types and scores changed, the unk surface and special ids set, then loads in both libraries.
Printed per case, unless both agree or both refuse: SILENT-ENCODE / SILENT-DECODE (ids or text
differ), BUG-EXC (qinterp raised something other than qinterp.Error), q-accepts-sp-refuses and
q-refuses. Ends with the counts.

    PYTHONPATH=build/python ~/.cache/qinterp/venv/bin/python scripts/fuzz_sentencepiece.py SEED CASES

Not part of `make test` (minutes, and random); docs/tokenizers.md says what it found.
"""
import os, random, shutil, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "python"))
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb
import qinterp
from differential import Tally, attempt, compare_tokenizers
from test_tokenizers import EDGE, paper_prompts, LLAMA2_MODEL

TRAINER_BOOLS = ["split_by_whitespace", "split_by_unicode_script", "split_by_number", "split_digits",
                 "allow_whitespace_only_pieces", "byte_fallback", "treat_whitespace_as_suffix", "remove_extra_whitespaces"]
NORM_BOOLS = ["add_dummy_prefix", "remove_extra_whitespaces", "escape_whitespaces"]


def mutate(m, rng):
    log = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        r = rng.random()
        if r < 0.35:
            k = rng.choice([k for k in TRAINER_BOOLS if hasattr(m.trainer_spec, k)])
            setattr(m.trainer_spec, k, not getattr(m.trainer_spec, k)); log.append(f"trainer.{k}={getattr(m.trainer_spec, k)}")
        elif r < 0.6:
            k = rng.choice(NORM_BOOLS)
            setattr(m.normalizer_spec, k, not getattr(m.normalizer_spec, k)); log.append(f"norm.{k}={getattr(m.normalizer_spec, k)}")
        elif r < 0.7:
            v = rng.choice([" ⁇ ", "", "?"]); m.trainer_spec.unk_surface = v; log.append(f"unk_surface={v!r}")
        elif r < 0.85:  # a piece's type changed
            i = rng.randrange(3, len(m.pieces))
            t = rng.choice([1, 2, 3, 4, 5, 6])
            log.append(f"piece[{i}]={m.pieces[i].piece!r}.type {m.pieces[i].type}->{t}")
            m.pieces[i].type = t
        elif r < 0.95:  # a score changed
            i = rng.randrange(3, len(m.pieces))
            s = rng.choice([0.0, -1e9, 1e9, m.pieces[i].score * 2, -m.pieces[i].score])
            log.append(f"piece[{i}]={m.pieces[i].piece!r}.score {m.pieces[i].score}->{s}")
            m.pieces[i].score = s
        else:
            k = rng.choice(["unk_id", "bos_id", "eos_id", "pad_id"])
            v = rng.choice([-1, 0, 1, 2, 3])
            setattr(m.trainer_spec, k, v); log.append(f"trainer.{k}={v}")
    return log


def main():
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    rng = random.Random(seed)
    base = open(LLAMA2_MODEL, "rb").read()
    texts = list(EDGE) + list(paper_prompts()[::80]) + ["  two  spaces ", "x\u3000y", "日本語 テキスト 123 4567", "tab\tsep", " ⁇ ", "a  b   c", "\n\n x \n"]
    root = tempfile.mkdtemp(prefix="spfuzz")
    path = os.path.join(root, "tokenizer.model")
    tally = Tally("sp")
    for i in range(cases):
        m = pb.ModelProto(); m.ParseFromString(base)
        log = mutate(m, rng)
        open(path, "wb").write(m.SerializeToString())
        def reference():
            sp = spm.SentencePieceProcessor(model_file=path)
            return sp, [sp.encode(t) for t in texts]

        def qinterp_side():
            tok = qinterp.load_tokenizer(path)
            return tok, tok.encode_many(texts, False, False)

        def compare(o, t):
            (tok, ours), (sp, theirs) = o, t
            return compare_tokenizers(texts, ours, theirs, tok.decode, sp.decode, "sp", len(EDGE))

        tally.add(f"[{i}] {' | '.join(log)}", attempt(qinterp_side, True), attempt(reference, False), compare)
    shutil.rmtree(root, ignore_errors=True)
    print(tally.counts)


if __name__ == "__main__":
    main()
