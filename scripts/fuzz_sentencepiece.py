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
    stats = {}
    for i in range(cases):
        m = pb.ModelProto(); m.ParseFromString(base)
        log = mutate(m, rng)
        open(path, "wb").write(m.SerializeToString())
        try:
            sp = spm.SentencePieceProcessor(model_file=path)
            theirs = [sp.encode(t) for t in texts]
            hf_ok = True
        except BaseException as e:
            hf_ok, hf_err = False, f"{type(e).__name__}: {str(e)[:100]}"
        try:
            tok = qinterp.load_tokenizer(path)
            ours = tok.encode_many(texts, False, False)
            q = "ok"
        except qinterp.Error as e:
            q, qerr = "err", str(e)[:160]
        except BaseException as e:
            q, qerr = "BUG", f"{type(e).__name__}: {str(e)[:160]}"
        if q == "BUG":
            verdict = "BUG-EXC"
        elif q == "ok" and hf_ok:
            bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
            if bad:
                verdict = f"SILENT-ENCODE {len(bad)}/{len(texts)} first {bad[0][0][:40]!r} q={bad[0][1][:12]} sp={bad[0][2][:12]}"
            else:
                verdict = "same"
                dbad = []
                for ids in theirs[:len(EDGE)] + theirs[len(EDGE)::5]:
                    try:
                        a = tok.decode(ids)
                    except qinterp.Error as e:
                        a = "ERR " + str(e)[:60]
                    b = sp.decode(ids)
                    if a != b:
                        dbad.append((a, b))
                if dbad:
                    verdict = f"SILENT-DECODE {len(dbad)} first q={dbad[0][0][:40]!r} sp={dbad[0][1][:40]!r}"
        elif q == "ok":
            verdict = "q-accepts-sp-refuses"
        elif hf_ok:
            verdict = "q-refuses"
        else:
            verdict = "both-refuse"
        key = verdict.split()[0]
        stats[key] = stats.get(key, 0) + 1
        if key not in ("same", "both-refuse"):
            extra = (f" | q: {qerr}" if q != "ok" else "") + ("" if hf_ok else f" | sp: {hf_err}")
            print(f"[{i}] {' | '.join(log)} -> {verdict}{extra}", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(stats)


if __name__ == "__main__":
    main()
