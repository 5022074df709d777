"""What the differential fuzzers share (fuzz_configs.py, fuzz_tokenizers.py,
fuzz_sentencepiece.py): run each library on one mutated file, classify the pair of outcomes,
print what needs reading and count the rest."""
import qinterp


def attempt(fn, ours):
    """(True, value), or (False, message): 'BUG ...' when qinterp raised anything but qinterp.Error."""
    try:
        return True, fn()
    except qinterp.Error as e:
        return False, str(e)[:160]
    except BaseException as e:  # noqa: BLE001 -- a crash of either library is a finding, not a stop
        return False, ("BUG " if ours else "") + f"{type(e).__name__}: {str(e)[:160]}"


def compare_ids(texts, ours, theirs, ref):
    """'' when every text has the same ids, else a SILENT-ENCODE line."""
    bad = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    if not bad:
        return ""
    t, a, b = bad[0]
    return f"SILENT-ENCODE {len(bad)}/{len(texts)} first {t[:40]!r} q={a[:12]} {ref}={b[:12]}"


def compare_decode(pairs, ref):
    """pairs: (ours, theirs) decoded texts; '' when all equal, else a SILENT-DECODE line."""
    bad = [(a, b) for a, b in pairs if a != b]
    return f"SILENT-DECODE {len(bad)} first q={bad[0][0][:40]!r} {ref}={bad[0][1][:40]!r}" if bad else ""


def compare_tokenizers(texts, ours, theirs, decode_ours, decode_ref, ref, edge):
    """'' or the first SILENT line: the ids of every text, then decoding their ids back (the first
    `edge` texts, which are the edge cases, and every fifth after them) on both sides."""
    pairs = [(attempt(lambda: decode_ours(ids), True)[1], decode_ref(ids)) for ids in theirs[:edge] + theirs[edge::5]]
    return compare_ids(texts, ours, theirs, ref) or compare_decode(pairs, ref)


class Tally:
    def __init__(self, ref):
        self.ref, self.counts = ref, {}

    def add(self, label, ours, theirs, compare):
        """ours, theirs: attempt() results; compare(our value, their value) -> '' or a SILENT line."""
        (q_ok, q), (r_ok, r) = ours, theirs
        if not q_ok and q.startswith("BUG"):
            verdict = "BUG-EXC"
        elif q_ok and r_ok:
            verdict = compare(q, r) or "same"
        elif q_ok:
            verdict = f"q-accepts-{self.ref}-refuses"
        else:
            verdict = "q-refuses" if r_ok else "both-refuse"
        key = verdict.split()[0]
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in ("same", "both-refuse"):
            extra = ("" if q_ok else f" | q: {q}") + ("" if r_ok else f" | {self.ref}: {r}")
            print(f"{label} -> {verdict}{extra}", flush=True)
