"""The main job (qinterp run / qinterp.run) end to end on stories260K: the file's layout, the
prediction numbers against transformers on the same weights and prompts, report = file, resume
after kills, torchrun with two processes, attach() on a transformers model, bad input."""
import csv
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import qinterp
from qinterp.analysis import ResultStore
from conftest import ROOT, SHARED, STORIES, write_hf_checkpoint

CLI = pathlib.Path(os.environ.get("QINTERP_CLI", ROOT / "build" / "qinterp"))
MODEL = STORIES / "stories260K.bin"
DATA = SHARED / "datasets" / "paper1"
PRECS = ["fp32", "int8", "nf4"]
HOOKS = ["blocks.0.mlp.hook_act", "blocks.2.mlp.hook_act", "blocks.4.mlp.hook_act"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "build" / "python"), QINTERP_DATA=str(DATA), OMP_NUM_THREADS="1")


def cli(*args, timeout=600):
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, timeout=timeout, env=ENV)


def small_run(out, **kw):
    args = dict(quant=PRECS, task=["boolq", "piqa"], out=str(out), limit=24, ig_limit=3, batch=8, data=str(DATA),
                progress=False)
    args.update(kw)
    return qinterp.run(MODEL, **args)


def small_run_cli(out):
    """small_run's settings through the command-line tool."""
    quants = [a for p in PRECS for a in ("--quant", p)]
    return cli("run", "--model", MODEL, *quants, "--task", "boolq", "--task", "piqa", "--out", out, "--limit", 24,
               "--ig-limit", 3, "--batch", 8, "--data", DATA)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run.h5"
    small_run(out)
    return out


def dump(path):
    """Every dataset and attribute of a file, for exact comparison; the checksums follow from the
    data and are left out (data compared within a tolerance has other bytes)."""
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if "_checkpoints" in name:
                return
            for k, v in obj.attrs.items():
                if k not in ("crc32", "attrs_crc32"):
                    out[f"{name}@{k}"] = v
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f.visititems(visit)
    return out


def test_layout(run_file):
    with ResultStore(str(run_file), "r") as s:
        assert s.list("") == ["stories260K"]
        # A stage that ran past checkpoint_seconds (60) left _checkpoints/{task}; its state is
        # removed when the stage finishes, the empty group stays (checked at the end).
        assert set(s.list("stories260K")) - {"_checkpoints"} == set(PRECS)
        for p in PRECS:
            for t in ("boolq", "piqa"):
                g = f"stories260K/{p}/{t}"
                assert set(s.list(g + "/predictions")) == {"predicted_id", "confidence", "correct", "gold"}
                assert s.read(g + "/predictions/confidence").shape == (24,)
                a = s.attrs(g + "/calibration")
                assert {"accuracy", "confidence", "ece", "ace"} <= set(a)
                assert "ace_count" in s.list(g + "/calibration")
                for h in HOOKS:
                    assert {"dead", "stats", "correlation", "salient"} <= set(s.list(f"{g}/{h}"))
                    assert s.read(f"{g}/{h}/salient/examples").item() + s.read(f"{g}/{h}/salient/skipped").item() == 3
                    assert s.read(f"{g}/{h}/dead/tokens").item() > 0
                if p == "fp32":
                    assert not s.exists(g + "/drift")
                else:
                    assert set(s.list(g + "/drift")) == set(HOOKS)
                    assert s.attrs(g + "/drift")["reference"] == "fp32"
                ta = s.attrs(g)
                assert ta["mode"] == "clean" and ta["model_file"] == str(MODEL) and ta["seed"] == 42
                assert "qinterp_version" in ta and ta["precision"] == p
    import h5py  # no stage state left behind: at most empty groups under _checkpoints
    with h5py.File(run_file, "r") as f:
        left = []
        if "stories260K/_checkpoints" in f:
            f["stories260K/_checkpoints"].visititems(lambda n, o: left.append(n) if isinstance(o, h5py.Dataset) else None)
        assert left == []


def authors_ace(conf, correct, bins=10):
    """analysis_and_viz/ace.py, with ties in confidence broken by correctness (docs/runner.md)."""
    order = sorted(range(len(conf)), key=lambda i: (conf[i], correct[i]))
    n, per, ace, start = len(conf), len(conf) // bins, 0.0, 0
    for b in range(bins):
        end = start + per + (1 if b < n % bins else 0)
        idx = order[start:end]
        if idx:
            ace += abs(np.mean([correct[i] for i in idx]) - np.mean([conf[i] for i in idx]))
        start = end
    return ace / bins


def test_predictions_match_transformers(run_file, tmp_path, stories_tok):
    """fp32: the paper's prediction (greedy next token after the left-padded prompt, pad = eos,
    softmax over the vocabulary) computed with transformers on the same weights and prompts."""
    from transformers import LlamaForCausalLM
    write_hf_checkpoint(qinterp.load_model(MODEL), tmp_path)
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    for name in ("boolq", "piqa"):
        task = qinterp.load_task(name, str(DATA))
        prompts = [task.prompt(i) for i in range(24)]
        preds, confs, correct = [], [], []
        for b0 in range(0, 24, 8):
            rows = [stories_tok.encode(p)[:512] for p in prompts[b0:b0 + 8]]
            width = max(map(len, rows))
            ids = torch.tensor([[2] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            with torch.no_grad():
                probs = torch.softmax(hf(ids, attention_mask=mask).logits[:, -1].float(), -1)
            c, i = probs.max(-1)
            for k in range(len(rows)):
                preds.append(int(i[k]))
                confs.append(float(c[k]))
                text = stories_tok.decode([int(i[k])]) or stories_tok.piece(int(i[k])).decode()
                correct.append(int(task.golds[b0 + k].strip().lower() in text.strip().lower()))
        with ResultStore(str(run_file), "r") as s:
            g = f"stories260K/fp32/{name}"
            assert s.read(g + "/predictions/predicted_id").tolist() == preds
            np.testing.assert_allclose(s.read(g + "/predictions/confidence").numpy(), confs, rtol=0, atol=2e-6)
            assert s.read(g + "/predictions/correct").long().tolist() == correct
            a = s.attrs(g + "/calibration")
            assert a["accuracy"] == pytest.approx(np.mean(correct), abs=1e-12)
            assert a["confidence"] == pytest.approx(np.mean(confs), abs=2e-6)
            assert a["ace"] == pytest.approx(authors_ace(confs, correct), abs=2e-6)


def test_report_matches_file(run_file, tmp_path):
    r = cli("report", run_file, "--out", tmp_path / "rep", "--latex")
    assert r.returncode == 0, r.stderr
    with open(tmp_path / "rep" / "accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    with ResultStore(str(run_file), "r") as s:
        for row in rows:
            a = s.attrs(f"stories260K/{row['precision']}/{row['task']}/calibration")
            for k, col in (("accuracy", "accuracy"), ("confidence", "confidence"), ("ace", "ACE"), ("ece", "ECE")):
                assert float(row[col]) == pytest.approx(a[k], abs=5e-5)
        with open(tmp_path / "rep" / "dead_neurons.csv") as f:
            for row in csv.DictReader(f):
                for h in HOOKS:
                    L = h.split(".")[1]
                    d = s.read_result(f"stories260K/{row['precision']}/{row['task']}/{h}/dead")
                    assert row[f"layer {L}"] == f"{d['count']} / {d['dead'].numel()}"
        with open(tmp_path / "rep" / "correlation.csv") as f:
            for row in csv.DictReader(f):
                pooled = sum(s.read(f"stories260K/{row['precision']}/{row['task']}/{h}/correlation/histogram")
                             for h in HOOKS)
                assert [int(row[k]) for k in list(row)[3:]] == pooled.tolist()
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# qinterp report")
    assert (tmp_path / "rep" / "accuracy.tex").exists()


def test_report_names_what_is_missing_or_malformed(run_file, tmp_path):
    """A file edited or damaged after the run: one line naming the file and the object, exit 1
    (these gave "internal error: map::at" and c10's messages; found by flipping bytes)."""
    import shutil
    import h5py
    g = "stories260K/int8/boolq"

    def replace(path, value):
        def edit(f):
            del f[path]
            f.create_dataset(path, data=value)
        return edit

    def remove(path):
        def edit(f):
            del f[path]
        return edit

    def set_hooks(f):
        f[g].attrs["hooks"] = "blocks.0.mlp.hook_act,mlp"
        del f[g].attrs["attrs_crc32"]  # an edit accepted, so that the hook names themselves are read

    def no_attr(path, name):
        def edit(f):
            del f[path].attrs[name]
            del f[path].attrs["attrs_crc32"]
        return edit

    def move(path, to):
        def edit(f):
            f.move(path, to)
        return edit

    edits = {
        "no_member": (remove(f"{g}/drift/{HOOKS[1]}/dead_jaccard"),
                      f"'{g}/drift/{HOOKS[1]}' has no dataset 'dead_jaccard'"),
        "two_counts": (replace(f"{g}/{HOOKS[0]}/salient/count", np.array([3, 4])),
                       f"'{g}/{HOOKS[0]}/salient/count' holds 2 values where one was expected"),
        "bad_count": (replace(f"{g}/{HOOKS[0]}/dead/count", np.float64(-2.5)),
                      f"'{g}/{HOOKS[0]}/dead/count' is -2.5, not a count"),
        "bad_hook": (set_hooks, f"'{g}' lists hook 'mlp', which is not blocks.<layer>.<point>"),
        "bins": (replace(f"{g}/{HOOKS[2]}/correlation/histogram", np.zeros(3, np.int64)),
                 "/correlation/histogram' has 3 bins where the task's other layers have"),
        # a flipped byte in a link name: that layer's results were left out of the table and the
        # pooled histogram, and the other layers' cells moved under its header
        "layer_gone": (move(f"{g}/{HOOKS[1]}/dead", f"{g}/{HOOKS[1]}/deae"),
                       f"'{g}/{HOOKS[1]}/dead' is missing where the other hooked layers of '{g}' have theirs"),
        "no_empty": (no_attr(f"{g}/predictions", "empty_answers"),
                     f"'{g}/predictions' has no numeric attribute 'empty_answers'"),
        "changed": (lambda f: f[f"{g}/calibration"].attrs.modify("accuracy", 0.99),
                    f"the attributes of '{g}/calibration' do not match their checksum"),
    }
    for name, (edit, message) in edits.items():
        bad = tmp_path / f"{name}.h5"
        shutil.copy(run_file, bad)
        with h5py.File(bad, "r+") as f:
            edit(f)
        r = cli("report", bad)
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, (name, r.returncode, err)
        assert err.startswith("qinterp: error: ") and str(bad) in err and message in err, (name, err)

    # An attribute message HDF5 cannot decode (its int64's size made 256 bytes): the attributes
    # read as none at all, and the task's accuracy row vanished from the table. The attribute
    # checks now name it.
    data = bytearray(run_file.read_bytes())
    at, hits = data.find(b"empty_answers\0"), 0
    while at > 0:  # every task's and precision's (the report stops at the first)
        assert data[at + 16] & 0x0F == 0 and data[at + 20:at + 24] == b"\x08\0\0\0"  # fixed-point, 8 bytes
        data[at + 20:at + 24] = b"\0\x01\0\0"
        at, hits = data.find(b"empty_answers\0", at + 1), hits + 1
    assert hits == len(PRECS) * 2
    bad = tmp_path / "undecodable.h5"
    bad.write_bytes(bytes(data))
    r = cli("report", bad)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert str(bad) in err and "attribute 'empty_answers' of 'stories260K/" in err, err
    assert "/predictions': its value is larger than the message holds; the file is damaged" in err, err

    # A stage without its done flag (a run killed while writing its results) is not reported;
    # the IG stage's table (salient neurons) still is.
    part = tmp_path / "unfinished.h5"
    shutil.copy(run_file, part)
    with h5py.File(part, "r+") as f:
        no_attr(g, "forward_done")(f)
    r = cli("report", part)
    assert r.returncode == 0, r.stderr
    sections = r.stdout.decode().split("\n### ")[1:]
    assert len(sections) == 5
    for sec in sections:
        rows = [line for line in sec.splitlines() if line.startswith("| stories260K | boolq |")]
        assert rows and any("| nf4 |" in line for line in rows), sec
        assert any("| int8 |" in line for line in rows) == sec.startswith("Salient"), sec


def test_figures_read_what_the_run_wrote(run_file, tmp_path):
    """qinterp.plots (the paper's figures) reads the calibration attributes and pools the layers'
    histograms as the report does; histograms of different sizes are an error, not a zip."""
    import shutil
    import h5py
    from qinterp.plots import draw_all, read_run
    rows, hist = read_run(str(run_file))
    assert len(rows) == len(PRECS) * 2 and set(hist) == {(r["model"], r["task"], r["precision"]) for r in rows}
    with ResultStore(str(run_file), "r") as s:
        for r in rows:
            g = f"{r['model']}/{r['precision']}/{r['task']}"
            a = s.attrs(g + "/calibration")
            assert all(r[k] == a[k] for k in ("accuracy", "confidence", "ece", "ace")), r
            pooled = sum(s.read(f"{g}/{h}/correlation/histogram") for h in HOOKS)
            assert hist[(r["model"], r["task"], r["precision"])] == pooled.tolist()
    files = draw_all(str(run_file), str(tmp_path / "fig"))
    assert sorted(os.path.basename(f) for f in files) == ["accuracy.png", "ace.png", "confidence.png", "correlation.png"]
    assert all(open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for f in files)
    bad = tmp_path / "bins.h5"
    shutil.copy(run_file, bad)
    with h5py.File(bad, "r+") as f:
        path = f"stories260K/nf4/piqa/{HOOKS[2]}/correlation/histogram"
        del f[path]
        f[path] = np.zeros(3, np.int64)
    with pytest.raises(qinterp.Error, match=r"histogram' has 3 bins where the task's other layers have 10"):
        read_run(str(bad))


def test_report_lines_up_models_hooked_at_other_layers(tmp_path):
    """Two models in one file, hooked at other blocks: each table has a column per block, and a
    model's cells sit under its own blocks (the first model's headers were used for every row)."""
    out = tmp_path / "two.h5"
    for name, layers in (("a", "0,2,4"), ("b", "1,3")):
        r = cli("run", "--model", MODEL, "--name", name, "--quant", "fp32", "--task", "boolq", "--data", DATA,
                "--limit", 4, "--ig-limit", 1, "--layers", layers, "--out", out, "--quiet")
        assert r.returncode == 0, r.stderr
    r = cli("report", out, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    with ResultStore(str(out), "r") as s:
        for table, what in (("dead_neurons", "dead"), ("salient_neurons", "salient")):
            with open(tmp_path / "rep" / f"{table}.csv") as f:
                rows = list(csv.DictReader(f))
            assert list(rows[0])[3:] == [f"layer {L}" for L in range(5)], table
            for row in rows:
                hooked = {0, 2, 4} if row["model"] == "a" else {1, 3}
                for L in range(5):
                    cell = row[f"layer {L}"]
                    if L not in hooked:
                        assert cell == "\u2013", (table, row)
                        continue
                    d = s.read_result(f"{row['model']}/fp32/boolq/blocks.{L}.mlp.hook_act/{what}")
                    want = f"{d['count']} / {d['dead'].numel()}" if what == "dead" else str(int(d["count"]))
                    assert cell == want, (table, row)


def test_rerun_refuses_a_file_whose_finished_results_are_damaged(run_file, tmp_path):
    """A finished stage is skipped without reading its results: a damaged one must stop the
    rerun at once, naming the object, and leave the file as it was (it passed silently)."""
    import shutil
    import h5py
    bad = tmp_path / "damaged.h5"
    shutil.copy(run_file, bad)
    target = f"stories260K/int8/piqa/{HOOKS[1]}/dead/count"
    with h5py.File(bad, "r+") as f:
        f[target].attrs["zzmarkerzz"] = 1
    data = bytearray(bad.read_bytes())
    at = data.find(b"zzmarkerzz")
    assert at > 16
    data[at - 14:at - 12] = b"\xf0\x7f"  # that attribute message's size: the object header no longer parses
    bad.write_bytes(bytes(data))
    r = small_run_cli(bad)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert str(bad) in err and f"'{target}'" in err and "already in the file do not read back" in err, err
    assert bad.read_bytes() == bytes(data)


@pytest.mark.parametrize("edit", ["dead_gone", "salient_gone", "drift_gone", "mark_gone"])
def test_rerun_refuses_a_finished_stage_with_a_hole(run_file, tmp_path, edit):
    """A stage marked finished is skipped on a rerun. Results missing from it (a group deleted or
    renamed, the finished mark gone from one precision) must stop the rerun, naming the object,
    not pass on to a report that refuses the file (or, before, to one with a layer missing)."""
    import shutil
    import h5py
    bad = tmp_path / "hole.h5"
    shutil.copy(run_file, bad)
    g = "stories260K/nf4/piqa"
    with h5py.File(bad, "r+") as f:
        if edit == "dead_gone":
            missing = f"{g}/{HOOKS[1]}/dead"
            f.move(missing, f"{g}/{HOOKS[1]}/dead_old")
        elif edit == "salient_gone":
            missing = f"stories260K/int8/boolq/{HOOKS[2]}/salient"
            del f[missing]
        elif edit == "drift_gone":
            missing = f"{g}/drift/{HOOKS[0]}"
            del f[missing]
        else:
            missing = g
            del f[g].attrs["forward_done"]
            del f[g].attrs["attrs_crc32"]  # an edit outside qinterp, accepted as such
    edited = bad.read_bytes()
    r = small_run_cli(bad)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert str(bad) in err and missing in err and "damaged or was edited" in err, err
    assert bad.read_bytes() == edited


def test_rerun_skips_finished_work_and_refuses_other_settings(run_file, tmp_path):
    before = dump(run_file)
    r = small_run(run_file)
    assert r["stages_run"] == 0 and r["stages_skipped"] == 2 + 2 * 3
    assert dump(run_file).keys() == before.keys()
    with pytest.raises(qinterp.Error, match="other settings"):
        small_run(run_file, limit=20)


def test_killed_runs_resume_to_the_same_file(tmp_path):
    """`qinterp run` killed at random points (a checkpoint after every batch) and started again
    with the same command ends with the file an uninterrupted run writes."""
    args = ["run", "--model", MODEL, "--quant", "fp32", "--quant", "nf4", "--task", "boolq", "--limit", "40",
            "--ig-limit", "4", "--batch", "4", "--checkpoint-seconds", "0", "--quiet"]
    ref = tmp_path / "ref.h5"
    r = cli(*args, "--out", ref)
    assert r.returncode == 0, r.stderr
    expected = dump(ref)
    for seed in (1, 2, 3):
        out = tmp_path / f"killed{seed}.h5"
        rng = random.Random(seed)
        kills = 0
        for attempt in range(12):
            p = subprocess.Popen([str(CLI), *map(str, args), "--out", str(out)], env=ENV,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                p.wait(timeout=rng.uniform(0.3, 2.5))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                continue
            assert p.returncode == 0, p.stderr.read()
            break
        else:
            r = cli(*args, "--out", out)
            assert r.returncode == 0, r.stderr
        assert_same_file(expected, dump(out), f"seed {seed}")
        print(f"seed {seed}: {kills} kills, then identical")


def damage_object_header(path, group):
    """Creates `group` in the file and overwrites the version byte of its object header, as a kill
    in the middle of HDF5 writing it can leave it: HDF5 can then neither open nor unlink it."""
    import h5py
    with h5py.File(path, "r+") as f:
        g = f.require_group(group)
        g.attrs["kind"] = "forward"
        addr = h5py.h5o.get_info(g.id).addr
    with open(path, "r+b") as fh:
        fh.seek(addr)
        assert fh.read(1) == b"\x01"  # version 1 object header (files readable by HDF5 1.8)
        fh.seek(addr)
        fh.write(b"\x07")


def test_unreadable_copies_killed_runs_leave_are_removed_at_the_end(run_file, tmp_path):
    """A kill while HDF5 writes a save's copy ('<group>.partial') can leave its object header
    unreadable (seen once in test_killed_runs_resume_to_the_same_file): HDF5 cannot unlink it, and
    h5py's visititems stopped at it in the finished file. The run's end rewrites the file without it."""
    import h5py
    out = tmp_path / "run.h5"
    out.write_bytes(run_file.read_bytes())
    before = dump(run_file)
    orphan = "stories260K/_checkpoints/boolq/forward.partial"
    damage_object_header(out, orphan)
    with h5py.File(out, "r") as f, pytest.raises(Exception, match="object header"):
        f.visititems(lambda name, obj: None)
    r = small_run(out)
    assert r["stages_run"] == 0 and r["dropped"] == ["/" + orphan]
    assert_same_file(before, dump(out), "after the rewrite")
    with h5py.File(out, "r") as f:
        assert f.attrs["qinterp_version"] == h5py.File(run_file, "r").attrs["qinterp_version"]
        assert "forward.partial" not in f["stories260K/_checkpoints/boolq"]
    # Damage anywhere else is not a save's copy: the file is left as it is, for the read-back to name.
    other = tmp_path / "other.h5"
    other.write_bytes(run_file.read_bytes())
    damage_object_header(other, "stories260K/_checkpoints/boolq/forward")
    damaged = other.read_bytes()
    assert ResultStore.drop_unreadable_objects(str(other)) == [] and other.read_bytes() == damaged
    cli_out = tmp_path / "cli.h5"
    cli_out.write_bytes(run_file.read_bytes())
    damage_object_header(cli_out, orphan)
    r = small_run_cli(cli_out)
    assert r.returncode == 0, r.stderr
    assert f"removed 1 unreadable copy(ies) that killed runs left, e.g. /{orphan}" in r.stderr.decode()


def test_rerun_refuses_a_file_with_a_loop_among_its_results(run_file, tmp_path):
    """A link back up the tree among the results sent the read-back that starts every rerun round
    in circles (no answer after 5 minutes). It is now one line naming the loop, and the file is
    left as it was."""
    import h5py
    bad = tmp_path / "loop.h5"
    bad.write_bytes(run_file.read_bytes())
    with h5py.File(bad, "r+") as f:
        f["stories260K/int8/piqa"]["again"] = f["stories260K/int8"]
    data = bad.read_bytes()
    r = small_run_cli(bad)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert f"{bad}: '/stories260K/int8/piqa/again' leads back to '/stories260K/int8', a loop" in err, err
    assert bad.read_bytes() == data


def assert_same_file(expected, got, where):
    assert got.keys() == expected.keys(), (where, sorted(got.keys() ^ expected.keys())[:5])
    for k in expected:
        e, g = expected[k], got[k]
        if isinstance(e, np.ndarray):
            assert np.array_equal(e, g, equal_nan=True), (where, k)
        else:
            assert e == g, (where, k)


def test_run_stopped_in_every_state_of_the_file_resumes_to_the_same_file(tmp_path):
    """The store stops the process (as a kill, nothing closed) right after its N-th flush when
    QINTERP_CRASH_AT_FLUSH=N: every state a run's file reaches on disk is tried in turn (two at a
    time), and a plain restart from each must end with the file of an uninterrupted run. This is
    what found the done flag written before the other precisions' results."""
    from concurrent.futures import ThreadPoolExecutor
    args = ["run", "--model", MODEL, "--quant", "fp32", "--quant", "nf4", "--task", "boolq", "--limit", "8",
            "--ig-limit", "2", "--batch", "4", "--layers", "2", "--checkpoint-seconds", "0", "--analyses", "all",
            "--quiet"]
    ref = tmp_path / "ref.h5"
    r = cli(*args, "--out", ref)
    assert r.returncode == 0, r.stderr
    expected = dump(ref)

    def stop_and_resume(n):
        out = tmp_path / f"stop{n}.h5"
        r = subprocess.run([str(CLI), *map(str, args), "--out", str(out)], capture_output=True, timeout=600,
                           env=dict(ENV, QINTERP_CRASH_AT_FLUSH=str(n)))
        if r.returncode == 0:
            return False  # n is past the run's last flush
        assert r.returncode == 86, (n, r.returncode, r.stderr)
        r = cli(*args, "--out", out)
        assert r.returncode == 0, (n, r.stderr)
        assert_same_file(expected, dump(out), f"stopped after flush {n}")
        out.unlink()
        return True

    n = 0
    with ThreadPoolExecutor(2) as pool:
        while all(pool.map(stop_and_resume, (n + 1, n + 2))):
            n += 2
    assert n > 20, f"only {n} flushes: the stop points did not cover the run"
    print(f"{n}+ stop points, each resumed to the same file")


def test_damaged_checkpoints_are_refused_not_resumed(tmp_path):
    """A checkpoint whose count of examples done is out of range, not one value, or disagrees with
    its predictions: one line naming what is wrong (these gave map::at and c10 messages, or would
    have resumed from the wrong example)."""
    import shutil
    import h5py
    args = ["run", "--model", MODEL, "--quant", "fp32", "--quant", "nf4", "--task", "boolq", "--limit", "8",
            "--ig-limit", "0", "--batch", "4", "--layers", "2", "--checkpoint-seconds", "0", "--quiet"]
    ck = "stories260K/_checkpoints/boolq/forward"
    stopped = tmp_path / "stopped.h5"
    for n in range(1, 40):  # the first state of the file with a forward checkpoint one batch in
        r = subprocess.run([str(CLI), *map(str, args), "--out", str(stopped)], capture_output=True, timeout=600,
                           env=dict(ENV, QINTERP_CRASH_AT_FLUSH=str(n)))
        assert r.returncode == 86, (n, r.returncode, r.stderr)
        with h5py.File(stopped, "r") as f:
            if ck in f and int(f[ck]["examples_done"][()]) == 4:
                break
        stopped.unlink()
    else:
        pytest.fail("no stop left a forward checkpoint")

    def edited(name, path, value):
        out = tmp_path / f"{name}.h5"
        shutil.copy(stopped, out)
        with h5py.File(out, "r+") as f:
            del f[path]
            f[path] = value
        return out

    cases = [("done_past_end", f"{ck}/examples_done", np.int64(9), "'examples_done' is not one count in [0, 8]"),
             ("done_negative", f"{ck}/examples_done", np.int64(-4), "'examples_done' is not one count in [0, 8]"),
             ("done_two", f"{ck}/examples_done", np.array([4, 4]), "'examples_done' is not one count"),
             ("done_other", f"{ck}/examples_done", np.int64(8), "holds 4 predictions of fp32 for 8 examples done"),
             ("fingerprints", f"{ck}/fingerprint", np.array([1, 2]), "has 2 fingerprints"),
             ("short_gold", f"{ck}/0|gold", np.array([0, 1]), "predictions of precision 0 are of different lengths"),
             ("empty", f"{ck}/1|empty", np.int64(5), "'1|empty' is not one count in [0, 4]")]
    for name, path, value, message in cases:
        out = edited(name, path, value)
        r = cli(*args, "--out", out)
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, (name, r.returncode, err)
        assert err.startswith("qinterp: error: ") and message in err and "damaged" in err, (name, err)
    r = cli(*args, "--out", stopped)  # the file as the stop left it resumes
    assert r.returncode == 0, r.stderr


def test_torchrun_two_processes_equal_one(tmp_path):
    args = ["run", "--model", MODEL, "--quant", "fp32", "--quant", "int8", "--task", "piqa", "--limit", "20",
            "--ig-limit", "4", "--batch", "4", "--quiet"]
    one = tmp_path / "one.h5"
    r = subprocess.run([sys.executable, "-m", "qinterp", *map(str, args), "--out", str(one)], env=ENV,
                       capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two.h5"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29500 + os.getpid() % 1000), "-m", "qinterp", *map(str, args), "--out", str(two)],
                       env=ENV, capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr.decode()[-3000:]
    a, b = dump(one), dump(two)
    assert a.keys() == b.keys()
    assert not any(p.name.startswith("two.h5.rank") for p in tmp_path.iterdir())
    moments = ("mean", "variance", "std", "mse", "cosine", "correlation", "top_values")
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) and x.dtype.kind == "f" and any(k.endswith("/" + m) for m in moments):
            np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-15, err_msg=k)
        elif isinstance(x, np.ndarray):
            assert np.array_equal(x, y, equal_nan=True), k
        elif isinstance(x, float):
            assert y == pytest.approx(x, rel=1e-12), k
        else:
            assert x == y, k


def test_attach_on_transformers_equals_qinterp(tmp_path, stories_tok):
    from transformers import LlamaForCausalLM
    from qinterp.analysis import Correlation, DeadNeurons
    ours = qinterp.load_model(MODEL)
    write_hf_checkpoint(ours, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    task = qinterp.load_task("piqa", str(DATA))
    ids, mask = qinterp.encode_batch(stories_tok, task.prompts[:6], pad_id=2)
    res = {}
    for which, model in (("qinterp", ours), ("hf", hf)):
        accs = {h: [DeadNeurons(), DeadNeurons(-0.05, 0.05), Correlation()] for h in HOOKS}
        with qinterp.attach(model, accs):
            with torch.no_grad():
                model.forward(ids, mask) if which == "qinterp" else model(ids, attention_mask=mask.long())
        res[which] = {h: [a.result() for a in accs[h]] for h in HOOKS}
    for h in HOOKS:
        q, t = res["qinterp"][h], res["hf"][h]
        for k in (0, 1):
            assert q[k]["tokens"] == t[k]["tokens"] == int(mask.sum())
            assert torch.equal(q[k]["dead"], t[k]["dead"]), h
        assert q[2]["pairs_total"] == t[2]["pairs_total"]
        diff = (q[2]["histogram"] - t[2]["histogram"]).abs().sum().item()
        assert diff <= 4, (h, q[2]["histogram"], t[2]["histogram"])  # |r| within ~1e-6: a pair may sit on an edge
    # detached: nothing is fed any more
    d = DeadNeurons()
    with qinterp.attach(hf, {"blocks.1.mlp.hook_act": d}):
        pass
    hf(ids[:1])
    assert d.tokens == 0


def test_python_hooks_receive_their_name():
    m = qinterp.load_model(MODEL)
    seen = []
    h1 = m.hooks.add("blocks.1.mlp.hook_act", lambda a, mask, name: seen.append(name))
    h2 = m.hooks.add("blocks.3.hook_resid_post", lambda a, mask: seen.append("plain"))
    m.forward(torch.tensor([[1, 403, 407]]))
    m.hooks.remove(h1)
    m.hooks.remove(h2)
    assert seen == ["blocks.1.mlp.hook_act", "plain"]


@pytest.mark.parametrize("args, says", [
    (["--task", "nosuchtask"], b"unknown task 'nosuchtask'"),
    (["--task", "{bad}"], b"bad.csv:3: a quoted field is never closed"),
    (["--quant", "nf5"], b"nf5"),
    (["--model", "/nonexistent.bin"], b"/nonexistent.bin: no such file"),
    (["--out", "{file}/run.h5"], b"is a file, not a folder"),
    (["--mode", "fast"], b"--mode must be clean or paper"),
    (["--analyses", "dead,corr"], b"unknown analysis 'corr'"),
    (["--layers", "0,7"], b"the model has layers 0..4, not 7"),
    (["--limit", "-1"], b"--limit expects a whole number"),
    (["--bogus", "1"], b"unknown option --bogus"),
])
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, says):
    bad = tmp_path / "bad.csv"
    bad.write_text('prompt,gold\n"ok",True\n"never closed,False\n')
    (tmp_path / "afile").write_text("x")
    args = [str(bad) if a == "{bad}" else str(tmp_path / "afile") + a[6:] if a.startswith("{file}") else a for a in args]
    base = {"--model": str(MODEL), "--task": "boolq", "--quant": "fp32", "--out": str(tmp_path / "out.h5")}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [x for kv in base.items() for x in kv]
    r = cli("run", *flat, "--quiet")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"qinterp: error: ") and says in lines[0], r.stderr
    assert not (tmp_path / "out.h5").exists()


def test_chat_template_matches_transformers():
    from transformers import AutoTokenizer
    from conftest import SMOLLM2
    hf = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
    tpl = qinterp._C.chat_template_of(str(SMOLLM2))
    for prompt in ("Respond with True or False only.\nis the sky blue\nAnswer:", "  two spaces, ünïcode  "):
        want = hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        assert qinterp._C.apply_chat_template(tpl, prompt) == want
    with pytest.raises(qinterp.Error, match="not one of the families"):
        qinterp._C.apply_chat_template("{{ messages }}", "x")


def test_user_task_csv_with_template_and_labels(tmp_path):
    csvf = tmp_path / "mytask.csv"
    csvf.write_text('text,answer\n"Is the cat, ""Tom"", happy?\nSecond line",yes\nIs it raining?,no\n"x",yes\n')
    with pytest.raises(qinterp.Error, match="no column 'prompt'"):
        qinterp.load_task(str(csvf))
    out = tmp_path / "u.h5"
    qinterp.run(MODEL, quant="fp32", task=str(csvf), out=out, template="Q: {}\nA:", labels=["yes", "no"],
                prompt_column="text", gold_column="answer", analyses="predictions", scoring="labels", progress=False)
    with ResultStore(str(out), "r") as s:
        g = "stories260K/fp32/mytask"
        assert s.attrs(g)["prompt_template"] == "Q: {}\nA:"
        assert s.read(g + "/predictions/gold").tolist() == [0, 1, 0]
        assert s.attrs(g + "/predictions")["labels"] == '["yes", "no"]'
    task = qinterp.load_task(str(csvf), prompt_template="Q: {}\nA:", prompt_column="text", gold_column="answer")
    assert task.prompt(0) == 'Q: Is the cat, "Tom", happy?\nSecond line\nA:' and task.labels == ["yes", "no"]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,gold\na,yes\nb,no,extra\n")
    with pytest.raises(qinterp.Error, match="bad.csv:3: a record with 3 fields where the header has 2"):
        qinterp.load_task(str(bad))
    bad.write_text("prompt,gold\na,maybe\n")
    with pytest.raises(qinterp.Error, match="bad.csv:2: gold 'maybe' is not one of the labels"):
        qinterp.load_task(str(bad), labels=["yes", "no"])


def test_attach_on_a_bitsandbytes_quantized_transformers_model(tmp_path, stories_tok):
    """transformers + bitsandbytes NF4 on the CPU: the act_fn modules are where they were, and the
    analysis sees exactly what act_fn returns on the unpadded tokens."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM
    from qinterp.analysis import DeadNeurons
    write_hf_checkpoint(qinterp.load_model(MODEL), tmp_path)
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path), quantization_config=cfg, device_map="cpu").eval()
    assert type(hf.model.layers[0].mlp.gate_proj).__name__ == "Linear4bit"
    # On CPUs with AVX-512 BF16, bitsandbytes 0.50 repacks 4-bit weights on the first no-grad
    # forward and asserts out_features % 32 == 0; stories260K's MLP is 172 wide. Its plain path.
    for mod in hf.modules():
        if hasattr(mod, "support_avx512bf16_for_cpu"):
            mod.support_avx512bf16_for_cpu = False
    ids, mask = qinterp.encode_batch(stories_tok, ["Once upon a time", "Tom had a ball"], pad_id=2)
    seen = []
    h = hf.model.layers[1].mlp.act_fn.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    d = DeadNeurons()
    try:
        with qinterp.attach(hf, {"blocks.1.mlp.hook_act": d}):
            with torch.no_grad():
                hf(ids, attention_mask=mask.long())
    finally:
        h.remove()
    assert len(seen) == 1
    act = seen[0][mask.bool()]
    assert d.tokens == int(mask.sum()) == act.shape[0]
    r = d.result()
    assert r["dead"].numel() == 172
    assert torch.equal(r["min"], act.min(0).values) and torch.equal(r["max"], act.max(0).values)
    assert torch.equal(r["dead"], ((act > -0.1) & (act < 0.1)).all(0))


def test_demo_moves_aside_a_file_of_other_settings(tmp_path):
    """`make demo` after a change of settings (or of qinterp) must not stop at 'holds results of a
    run with other settings': the old file is moved aside, named, and the run starts afresh."""
    import h5py
    cmd = [sys.executable, str(ROOT / "examples" / "demo.py"), "--model", str(MODEL), "--tasks", "boolq",
           "--ig-limit", "1", "--batch", "4", "--out", str(tmp_path)]
    r = subprocess.run(cmd + ["--limit", "4"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "moved to" not in r.stdout
    r = subprocess.run(cmd + ["--limit", "6"], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr
    moved = sorted(tmp_path.glob("run.*.h5"))
    assert len(moved) == 1 and f"moved to {moved[0].name}" in r.stdout, r.stdout
    with h5py.File(moved[0], "r") as old, h5py.File(tmp_path / "run.h5", "r") as new:
        assert old["stories260K/fp32/boolq"].attrs["examples"] == 4
        assert new["stories260K/fp32/boolq"].attrs["examples"] == 6


def test_gptq_run_calibrates_on_the_first_task_and_reports_its_layers(tmp_path, stories_tok):
    """A GPTQ precision in a run: the dense model is quantized in place with 8 random windows (seed 0)
    of the first task's prompts, and GPTQ's layers show in the progress. Its predictions equal a
    model quantized on load with those windows."""
    spec = "gptq4:group=32,calib=8,seqlen=32"
    events = []
    out = tmp_path / "g.h5"
    small_run(out, quant=[spec], task=["boolq"], limit=8, analyses="predictions", progress=events.append)
    gptq = [e for e in events if e.stage == f"GPTQ {spec}"]
    assert [(e.done, e.total) for e in gptq] == [(i, 5) for i in range(1, 6)] and gptq[-1].finished
    task = qinterp.load_task("boolq", str(DATA))
    ids = [t for i in range(len(task)) for t in stories_tok.encode(task.prompt(i))]
    windows = qinterp.random_calibration_windows(torch.tensor(ids), 8, 32, 0)
    m = qinterp.load_model(MODEL, quant=qinterp._C.spec_for_device(spec, "cpu"), calibration=windows)
    rows = [stories_tok.encode(task.prompt(i))[:512] for i in range(8)]
    width = max(map(len, rows))
    x = torch.tensor([[2] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.bool)
    with torch.no_grad():
        c, i = torch.softmax(m.forward(x, mask)[:, -1].float(), -1).max(-1)
    with ResultStore(str(out), "r") as s:
        g = f"stories260K/{spec}/boolq/predictions"
        assert s.read(g + "/predicted_id").tolist() == i.tolist()
        np.testing.assert_allclose(s.read(g + "/confidence").numpy(), c.numpy(), rtol=0, atol=2e-6)
