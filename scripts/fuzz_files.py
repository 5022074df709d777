"""Mutation fuzzing of every file reader qinterp has, through the Python package.

Each target is a real file (the stories260K model and tokenizer, the Llama-2 tokenizer.model,
safetensors checkpoints written by Model.save, a result store with a saved Correlation state, a
run-like store before and after a kill left a save's copy unreadable, a tokenizer.json written by
transformers, the SmolLM2 GGUF if it was downloaded). Copies are
mutated (bit flips and extreme integers in the first 4 KB or anywhere, truncations; for JSON also
changed values and types) and loaded in a worker process. Anything other than success or
qinterp.Error is reported and the file kept: a Python exception of another type, a crash
(the worker dies), or a hang (no answer in --timeout seconds). The run-like stores go through
ResultStore.drop_unreadable_objects, which must keep every dataset that read before it
("ok-rewritten" when it dropped something).

    PYTHONPATH=build/python ~/.cache/qinterp/venv/bin/python scripts/fuzz_files.py --cases 500
    ... --only h5,json --seed 7 --keep /tmp/fuzz-found

Not part of `make test` (minutes, and random); docs/verification.md says what it found.
"""
import argparse
import copy
import json
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("QINTERP_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))
SMOLLM2 = os.path.expanduser("~/.cache/qinterp/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def worker():
    """Reads 'kind path' lines, loads each, prints one line: ok, qerror ..., or other ..."""
    import torch
    import qinterp
    from qinterp import analysis

    def load(kind, path):
        if kind == "model":
            qinterp.load_model(path).forward(torch.tensor([[1, 2, 3]]))
        elif kind == "tok":
            t = qinterp.load_tokenizer(path)
            ids = t.encode("Once upon a time, hello world <s> \u00e9\u4e2d")
            t.decode(ids)
        elif kind == "h5":
            s = qinterp.ResultStore(path, "r")
            for name in ["a", "missing"]:
                try:
                    s.read(name)
                except qinterp.Error:
                    pass
            s.attrs("")
            c = analysis.Correlation()
            c.restore(s.load_state("m/p/corr"))
            c.result()
        elif kind == "h5drop":
            # What a run's end does to its file: drop_unreadable_objects on a copy (the mutated
            # file stays as it is, to be kept). It may drop only '.partial' copies: every dataset
            # readable before must read back equal, and a file with nothing dropped must be
            # byte for byte the same.
            work = path + ".work"
            shutil.copy(path, work)
            before = walk(work)
            orig = open(work, "rb").read()
            dropped = qinterp.ResultStore.drop_unreadable_objects(work)
            if not dropped:
                if open(work, "rb").read() != orig:
                    raise AssertionError("nothing dropped, yet the file changed")
                return None
            if any(".partial" not in d.rsplit("/", 1)[-1] for d in dropped):
                raise AssertionError(f"dropped objects that are not save copies: {dropped}")
            after = walk(work)
            for name, t in before.items():
                if any(name == d or name.startswith(d + "/") for d in dropped):
                    continue
                if name not in after or not torch.equal(after[name], t):
                    raise AssertionError(f"{name} was readable before the rewrite and is lost or changed after it")
            return "dropped"

    def walk(path):
        """Every dataset qinterp can read in the store at path: {name: tensor}."""
        out = {}
        try:
            s = qinterp.ResultStore(path, "r")
        except qinterp.Error:
            return out

        def visit(group, depth):
            try:
                names = s.list(group)
            except qinterp.Error:
                return
            for n in names:
                full = f"{group}/{n}" if group else n
                try:
                    out[full] = s.read(full)
                except qinterp.Error:
                    if depth < 8:
                        visit(full, depth + 1)
        visit("", 0)
        s.close()
        return out

    for line in sys.stdin:
        kind, path = line.split(maxsplit=1)
        try:
            r = "ok" if load(kind, path.strip()) is None else "ok-rewritten"
        except qinterp.Error as e:
            r = "qerror " + str(e).replace("\n", " ")[:200]
        except Exception as e:  # noqa: BLE001 -- exactly what the fuzzer looks for
            r = f"other {type(e).__name__}: " + str(e).replace("\n", " ")[:200]
        print(r, flush=True)


class Worker:
    def __init__(self, timeout):
        self.timeout = timeout
        self.start()

    def start(self):
        self.p = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def run(self, kind, path):
        self.p.stdin.write(f"{kind} {path}\n")
        self.p.stdin.flush()
        ready, _, _ = select.select([self.p.stdout], [], [], self.timeout)
        if not ready:
            self.p.kill()
            self.p.wait()
            self.start()
            return "HANG"
        line = self.p.stdout.readline()
        if not line:
            rc = self.p.wait()
            err = self.p.stderr.read()[-300:]
            self.start()
            return f"CRASH rc={rc} {err!r}"
        return line.strip()


def mutate_bytes(data, rng, head):
    d = bytearray(data)
    how = rng.choice(["flip_head", "flip_any", "trunc", "int_head", "int_any"])
    if how == "trunc":
        return bytes(d[:rng.randrange(len(d))]), how
    for _ in range(rng.randint(1, 8)):
        if how.startswith("flip"):
            i = rng.randrange(min(len(d), head) if how == "flip_head" else len(d))
            d[i] ^= 1 << rng.randrange(8)
        else:
            w = rng.choice([4, 8])
            i = rng.randrange(max(1, (min(len(d), head) if how == "int_head" else len(d)) - w))
            v = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 2**64 - 1, 1 << 40, rng.randrange(1 << 32)])
            d[i:i + w] = (v & ((1 << (8 * w)) - 1)).to_bytes(w, "little")
    return bytes(d), how


def mutate_json(obj, rng):
    def paths(o, p=()):
        yield p
        if isinstance(o, dict):
            for k, v in list(o.items())[:50]:
                yield from paths(v, p + (k,))
        elif isinstance(o, list) and o:
            for i in rng.sample(range(len(o)), min(5, len(o))):
                yield from paths(o[i], p + (i,))

    every = list(paths(obj))[1:]
    for _ in range(rng.randint(1, 3)):
        p = rng.choice(every)
        parent = obj
        try:
            for k in p[:-1]:
                parent = parent[k]
            if rng.random() < 0.3 and isinstance(parent, dict):
                del parent[p[-1]]
            else:
                parent[p[-1]] = rng.choice([None, -1, 2**40, "", "zz", [], {}, [1, 2], 3.5, True,
                                            {"type": "BPE"}, "\u0000", "a b c"])
        except (KeyError, IndexError, TypeError):
            pass
    return obj


def make_seeds(d):
    """The target files: (name, kind, path, how to mutate)."""
    import torch
    import qinterp
    from qinterp import analysis

    stories = os.path.join(SHARED, "fixtures/stories260K")
    t = [("llama2c model", "model", os.path.join(stories, "stories260K.bin"), "bytes"),
         ("llama2c tokenizer", "tok", os.path.join(stories, "tok512.bin"), "bytes"),
         ("sentencepiece", "tok", os.path.join(SHARED, "fixtures/llama2-tokenizer/tokenizer.model"), "bytes")]
    m = qinterp.load_model(os.path.join(stories, "stories260K.bin"))
    m.save(os.path.join(d, "fp32"))
    qinterp.load_model(os.path.join(stories, "stories260K.bin"), quant="nf4").save(os.path.join(d, "nf4"))
    t += [("safetensors fp32", "model", os.path.join(d, "fp32/model.safetensors"), "dir"),
          ("safetensors nf4", "model", os.path.join(d, "nf4/model.safetensors"), "dir")]
    s = qinterp.ResultStore(os.path.join(d, "r.h5"), "w")
    s.write("a", torch.arange(1000, dtype=torch.float64))
    c = analysis.Correlation()
    c.update(torch.randn(300, 40))
    s.save_state("m/p/corr", c.state())
    s.close()
    t.append(("h5 result store", "h5", os.path.join(d, "r.h5"), "bytes"))
    # A run's file as a killed run can leave it: results, states, attributes and save copies.
    s = qinterp.ResultStore(os.path.join(d, "run.h5"), "w")
    s.set_attrs("", {"qinterp_version": "x", "model": "m"})
    for k in range(2):
        s.write(f"m/t{k}/forward/loss", torch.randn(40, dtype=torch.float64))
        s.save_state(f"m/t{k}/corr", c.state(), {"examples": 300})
        s.write_tensors(f"m/_checkpoints/t{k}/forward.partial", {"n": torch.arange(20), "x": torch.randn(8, 5)})
    s.write_tensors("m/_checkpoints/t0/forward.partial1", {"n": torch.arange(3)})
    s.set_attrs("m/t1", {"done": 1, "note": "abc"})
    s.close()
    t.append(("h5 run file rewrite", "h5drop", os.path.join(d, "run.h5"), "bytes"))
    # The same with one copy's object header unreadable, as a kill can leave it: the rewrite's case.
    import h5py
    killed = os.path.join(d, "killed.h5")
    shutil.copy(os.path.join(d, "run.h5"), killed)
    with h5py.File(killed, "r") as f:
        at = h5py.h5o.get_info(f["m/_checkpoints/t1/forward.partial"].id).addr
    with open(killed, "r+b") as f:
        f.seek(at)
        f.write(b"\x07")  # the version byte of a version 1 object header
    t.append(("h5 killed run file rewrite", "h5drop", killed, "bytes"))
    try:
        import transformers
        src = os.path.join(d, "l2src")
        os.makedirs(src)
        shutil.copy(os.path.join(SHARED, "fixtures/llama2-tokenizer/tokenizer.model"), src)
        transformers.LlamaTokenizer.from_pretrained(src).save_pretrained(os.path.join(d, "hf"))
        t.append(("tokenizer.json", "tok", os.path.join(d, "hf/tokenizer.json"), "json"))
    except Exception as e:  # noqa: BLE001
        print(f"skipping tokenizer.json: transformers could not write one ({e})")
    if os.path.exists(SMOLLM2):
        t.append(("gguf", "model", SMOLLM2, "gguf"))
    else:
        print(f"skipping GGUF: {SMOLLM2} not downloaded (scripts/setup.sh)")
    return t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cases", type=int, default=300, help="mutated copies per target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated parts of target names (e.g. h5,json)")
    ap.add_argument("--timeout", type=float, default=20, help="seconds before a load counts as a hang")
    ap.add_argument("--keep", default="fuzz-found", help="folder for the files that misbehaved")
    a = ap.parse_args()
    if a.worker:
        return worker()
    tmp = tempfile.mkdtemp(prefix="qinterp-fuzz-")
    os.makedirs(a.keep, exist_ok=True)
    w = Worker(a.timeout)
    found = []
    for name, kind, src, how in make_seeds(tmp):
        if a.only and not any(o in name for o in a.only.split(",")):
            continue
        rng = random.Random(f"{a.seed}/{name}")  # per target, so that --only reproduces a case
        t0, counts = time.time(), {}
        whole = open(src, "rb").read() if how != "gguf" else None
        head = open(src, "rb").read(1 << 20) if how == "gguf" else None
        if how == "gguf":
            g = os.path.join(tmp, "m.gguf")
            shutil.copy(src, g)
        jobj = json.loads(whole) if how == "json" else None
        for i in range(a.cases):
            if how == "json" and rng.random() < 0.8:
                data, what = json.dumps(mutate_json(copy.deepcopy(jobj), rng)).encode(), "json"
            else:
                data, what = mutate_bytes(whole if how != "gguf" else head, rng, 4096)
            if how == "gguf":  # the GGUF is 98 MB: mutate its first MB in place, then restore it
                with open(g, "r+b") as f:
                    if what == "trunc":
                        f.truncate(len(data))
                    else:
                        f.write(data)
                r = w.run("model", g)
                if r.split()[0] in ("ok", "qerror"):
                    r = w.run("tok", g)
                if what == "trunc":
                    shutil.copy(src, g)
                else:
                    with open(g, "r+b") as f:
                        f.write(head)
                target = None
            else:
                folder = os.path.join(tmp, "case")
                shutil.rmtree(folder, ignore_errors=True)
                os.makedirs(folder)
                fname = os.path.basename(src)
                open(os.path.join(folder, fname), "wb").write(data)
                target = folder if how == "dir" else os.path.join(folder, fname)
                r = w.run(kind, target)
            cls = r.split()[0]
            counts[cls] = counts.get(cls, 0) + 1
            if cls not in ("ok", "ok-rewritten", "qerror"):
                kept = os.path.join(a.keep, f"{name.replace(' ', '_')}-{a.seed}-{i}")
                if target and os.path.isdir(target):
                    shutil.copytree(target, kept)
                elif target:
                    shutil.copy(target, kept)
                else:  # the GGUF is too big to keep: its mutated first MB instead
                    kept = os.path.join(a.keep, f"gguf-{a.seed}-{i}.first-MB")
                    open(kept, "wb").write(data)
                found.append((name, what, kept, r[:300]))
        print(f"{name}: {a.cases} cases, {counts} ({time.time() - t0:.0f} s)", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    for f in found:
        print("FOUND", *f)
    print(f"{len(found)} files misbehaved" + (f"; kept in {a.keep}/" if found else ""))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
