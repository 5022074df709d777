"""qinterp's HDF5 ResultStore read back with h5py; a killed run leaves a readable file that a
new run can append to; damaged files give qinterp.Error."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

import qinterp
from qinterp import analysis as qa


def test_results_and_attrs_readable_with_h5py(tmp_path):
    path = str(tmp_path / "run.h5")
    torch.manual_seed(0)
    x = torch.randn(300, 40)
    dead, corr = qa.DeadNeurons(), qa.Correlation(top_k=5)
    dead.update(x * 0.05)
    corr.update(x)
    group = qa.ResultStore.join(["stories260K", "nf4", "piqa", "blocks.2.mlp.hook_act"])
    with qa.ResultStore(path, "w") as store:
        store.set_attrs("stories260K/nf4", {"spec": "nf4:block=64,double_quant=1", "seed": 42, "ece_bins": 10.0})
        store.write_result(group + "/DeadNeurons", dead.result())
        store.write_result(group + "/Correlation", corr.result())
        store.write("raw/half", torch.arange(6, dtype=torch.float16).reshape(2, 3) / 4)
        store.write("raw/big", torch.arange(100000, dtype=torch.float32).reshape(1000, 100))
    with h5py.File(path, "r") as f:
        assert f.attrs["qinterp_version"] == qinterp.__version__
        assert f.attrs["torch_version"].startswith(torch.__version__.split("+")[0])
        a = f["stories260K/nf4"].attrs
        assert a["spec"] == "nf4:block=64,double_quant=1" and a["seed"] == 42 and a["ece_bins"] == 10.0
        g = f[group]
        assert g["DeadNeurons/count"][()] == dead.result()["count"]
        assert g["DeadNeurons/dead"].attrs["dtype"] == "bool"
        assert np.array_equal(g["DeadNeurons/dead"][()].astype(bool), dead.result()["dead"].numpy())
        assert np.array_equal(g["Correlation/histogram"][()], corr.result()["histogram"].numpy())
        assert g["Correlation/top_values"].dtype == np.float64
        assert f["raw/half"].dtype == np.float16
        assert np.array_equal(f["raw/half"][()], (np.arange(6, dtype=np.float16) / 4).reshape(2, 3))
        big = f["raw/big"]
        assert big.chunks is not None and big.compression == "gzip"
        assert np.array_equal(big[()], np.arange(100000, dtype=np.float32).reshape(1000, 100))
    store = qa.ResultStore(path, "r")
    back = store.read_result(group + "/DeadNeurons")
    assert torch.equal(back["dead"], dead.result()["dead"]) and back["count"] == dead.result()["count"]
    assert store.list(group) == ["Correlation", "DeadNeurons"]
    with pytest.raises(qinterp.Error, match="read-only"):
        store.write("x", torch.zeros(1))


def test_checksums_are_zlib_crc32_and_changes_are_caught(tmp_path):
    """Every dataset carries zlib.crc32 of its bytes and every attributed object a CRC-32 of its
    attributes (the form in result_store.cpp). A changed number in a small dataset or an attribute
    (neither checked by HDF5 in this format) is an error naming the object; files without the
    checksums (h5py's) read as before."""
    import zlib
    path = tmp_path / "run.h5"
    with qa.ResultStore(str(path), "w") as store:
        store.write("g/count", torch.tensor(7))
        store.write("g/hist", torch.arange(10, dtype=torch.int64))
        store.write("g/dead", torch.tensor([True, False, True]))
        store.write("g/big", torch.arange(100000, dtype=torch.float32))
        store.set_attrs("g", {"accuracy": 0.75, "n": 4, "spec": "nf4"})
    with h5py.File(path, "r") as f:
        for name in ("count", "hist", "dead", "big"):
            ds = f["g"][name]
            assert ds.attrs["crc32"] == zlib.crc32(ds[()].tobytes()), name
        form = b"".join(k.encode() + b"\0" + v for k, v in sorted({
            "accuracy": b"f" + np.float64(0.75).tobytes(), "n": b"i" + np.int64(4).tobytes(),
            "spec": b"snf4\0"}.items()))
        assert f["g"].attrs["attrs_crc32"] == zlib.crc32(form)
    store = qa.ResultStore(str(path), "r")
    assert store.attrs("g") == {"accuracy": 0.75, "n": 4, "spec": "nf4"}  # the checksums are not results
    assert store.read("g/hist").tolist() == list(range(10))

    def changed(name, edit):
        out = tmp_path / f"{name}.h5"
        out.write_bytes(path.read_bytes())
        with h5py.File(out, "r+") as f:
            edit(f)
        return str(out)

    def poke(f):  # one element rewritten in place, as damage would: the dataset keeps its checksum
        f["g/hist"][3] = 4
    bad = changed("data", poke)
    with pytest.raises(qinterp.Error, match=r"data\.h5: dataset 'g/hist' does not match its checksum"):
        qa.ResultStore(bad, "r").read("g/hist")
    bad = changed("attr", lambda f: f["g"].attrs.modify("accuracy", 0.875))
    with pytest.raises(qinterp.Error, match=r"attr\.h5: the attributes of 'g' do not match their checksum"):
        qa.ResultStore(bad, "r").attrs("g")

    def accept(f):  # deleting the checksums is how an edit outside qinterp is accepted
        f["g/hist"][3] = 4
        del f["g/hist"].attrs["crc32"]
        f["g"].attrs.modify("accuracy", 0.875)
        del f["g"].attrs["attrs_crc32"]
    ok = qa.ResultStore(changed("accepted", accept), "r")
    assert ok.read("g/hist")[3] == 4 and ok.attrs("g")["accuracy"] == 0.875

    # An attribute name that is not UTF-8 (only a damaged or foreign file has one) comes back
    # escaped, so that it converts to a Python str.
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs[b"qinterp\xffversion"] = 1
    assert qa.ResultStore(str(foreign), "r").attrs("") == {"qinterp\\xffversion": 1}


def test_activation_dump_layout_and_append(tmp_path):
    path = str(tmp_path / "dump.h5")
    torch.manual_seed(0)
    act = torch.randn(2, 5, 16)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    store = qa.ResultStore(path, "w")
    d = store.dump("model/fp32/piqa/blocks.0.mlp.hook_act", 16, fp16=True)
    d.append_masked(act, mask, first_example=10)
    d.append(torch.ones(3, 16), torch.tensor([12, 12, 12]), torch.tensor([0, 1, 2]))
    assert d.rows == 11
    del d, store
    with h5py.File(path, "r") as f:
        g = f["model/fp32/piqa/blocks.0.mlp.hook_act"]
        a, t = g["activations"], g["tokens"]
        assert a.shape == (11, 16) and a.dtype == np.float16 and a.maxshape == (None, 16)
        np.testing.assert_array_equal(a[:8], act[mask].half().numpy())
        assert t[:8].tolist() == [[10, 2], [10, 3], [10, 4], [11, 0], [11, 1], [11, 2], [11, 3], [11, 4]]
        assert t[8:].tolist() == [[12, 0], [12, 1], [12, 2]]
    store = qa.ResultStore(path, "a")
    d = store.dump("model/fp32/piqa/blocks.0.mlp.hook_act", 16, fp16=True)
    assert d.rows == 11  # reopened: appends continue where the file ends
    with pytest.raises(qinterp.Error, match="holds 16 neurons, not 8"):
        store.dump("model/fp32/piqa/blocks.0.mlp.hook_act", 8)


WRITER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, sys.argv[2])
    from qinterp import analysis as qa
    store = qa.ResultStore(sys.argv[1], "a")
    d = store.dump("m/fp32/t/blocks.0.mlp.hook_act", 256, fp16=False)
    dead, i = qa.DeadNeurons(), 0
    if store.exists("m/fp32/t/state/DeadNeurons") or store.exists("m/fp32/t/state/DeadNeurons.partial"):
        st = store.load_state("m/fp32/t/state/DeadNeurons")
        dead.restore(st)
        i = dead.tokens // 64
        d.truncate(64 * i)  # rows appended after the last saved state are redone
    while True:
        g = torch.Generator().manual_seed(i)
        x = torch.randn(64, 256, generator=g)
        d.append(x, torch.full((64,), i), torch.arange(64))
        dead.update(x)
        store.save("m/fp32/t/state/DeadNeurons", dead, {"batches_done": i + 1})
        print(i, flush=True)
        i += 1
""")


def test_killed_run_leaves_readable_file_and_resumes(tmp_path):
    path = str(tmp_path / "killed.h5")
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    pkg = os.path.dirname(os.path.dirname(qinterp.__file__))
    for attempt, delay in enumerate([0.0, 0.013, 0.031]):
        p = subprocess.Popen([sys.executable, str(script), path, pkg], stdout=subprocess.PIPE, text=True)
        lines = 0
        while lines < 5 + 3 * attempt:
            assert p.stdout.readline(), "writer died"
            lines += 1
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)  # mid-write, without any cleanup
        p.wait()
        with h5py.File(path, "r") as f:
            g = f["m/fp32/t/blocks.0.mlp.hook_act"]
            rows = min(g["activations"].shape[0], g["tokens"].shape[0])
            assert rows >= 64 * lines
            # A compressed chunk rewritten by the killed append could move and take committed rows
            # with it (1 kill in 40 did, before): the dump must stay unfiltered, and all of it readable.
            assert g["activations"].compression is None and g["tokens"].compression is None
            g["activations"][:], g["tokens"][:]
            full = rows // 64
            for i in [0, full - 1]:
                x = torch.randn(64, 256, generator=torch.Generator().manual_seed(i)).numpy()
                np.testing.assert_array_equal(g["activations"][64 * i:64 * (i + 1)], x)
                assert (g["tokens"][64 * i:64 * (i + 1), 0] == i).all()
        store = qa.ResultStore(path, "r")
        resumed = qa.DeadNeurons()
        resumed.restore(store.load_state("m/fp32/t/state/DeadNeurons"))
        done = resumed.tokens // 64
        assert done >= lines and resumed.tokens == 64 * done
        store.close()
        print(f"killed after {lines} reported appends: {rows} rows readable, state has {done} batches")
    # every batch once, in order, across the three resumed runs
    with h5py.File(path, "r") as f:
        t = f["m/fp32/t/blocks.0.mlp.hook_act/tokens"][:64 * done, 0]
        assert np.array_equal(t, np.repeat(np.arange(done), 64))
    ref = qa.DeadNeurons()
    for i in range(done):
        ref.update(torch.randn(64, 256, generator=torch.Generator().manual_seed(i)))
    assert torch.equal(ref.result()["min"], resumed.result()["min"])
    assert torch.equal(ref.result()["outside"], resumed.result()["outside"])


def test_damaged_files_raise_qinterp_error(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not an HDF5 file at all" * 100)
    with pytest.raises(qinterp.Error, match=r"junk\.h5.*not an HDF5 file"):
        qa.ResultStore(str(junk), "r")
    good = tmp_path / "good.h5"
    s = qa.ResultStore(str(good), "w")
    s.write("a/b", torch.arange(50000, dtype=torch.float64))
    del s
    data = good.read_bytes()
    for cut in [0, 100, 2000, len(data) // 2]:
        bad = tmp_path / f"cut{cut}.h5"
        bad.write_bytes(data[:cut])
        try:
            st = qa.ResultStore(str(bad), "r")
            st.read("a/b")
        except qinterp.Error as e:
            assert str(bad) in str(e)
        else:
            pytest.fail(f"truncated at {cut} bytes but read fine")
    s = qa.ResultStore(str(good), "r")
    with pytest.raises(qinterp.Error, match="no dataset 'a/missing'"):
        s.read("a/missing")
    with pytest.raises(qinterp.Error, match="not a saved analysis state"):
        s.load_state("a")
    with pytest.raises(qinterp.Error, match="no such file"):
        qa.ResultStore(str(tmp_path / "absent.h5"), "r")
    with pytest.raises(qinterp.Error, match="cannot be a group name"):
        qa.ResultStore.join(["model", "a/b"])


def store_with_a_save_copy(path):
    """m/a/x, a save's copy m/_c/f.partial, and a member 'zzlinkname' of m/a whose name is
    the only copy of those bytes in the file."""
    s = qa.ResultStore(str(path), "w")
    s.write("m/a/x", torch.arange(3.0))
    s.write("m/a/zzlinkname/y", torch.arange(2.0))
    s.write_tensors("m/_c/f.partial", {"n": torch.arange(2)})
    s.close()


@pytest.mark.parametrize("damage", ["empty name", "name .", "name with /", "hard link up", "soft link up"])
def test_names_and_loops_no_store_holds_are_errors_not_endless_walks(tmp_path, damage):
    """A damaged name ('' or '.' or one with '/') or a link back up the tree made every walk of the
    file go round in circles: drop_unreadable_objects (which every run's end calls) recursed until
    the stack ran out (SIGSEGV; found by scripts/fuzz_files.py, seed 1), and so would a run's
    read-back. list() refuses such a member, naming it; drop_unreadable_objects leaves the file."""
    path = tmp_path / "s.h5"
    store_with_a_save_copy(path)
    with h5py.File(path, "r") as f:
        copy_header = h5py.h5o.get_info(f["m/_c/f.partial"].id).addr
    if damage in ("hard link up", "soft link up"):
        with h5py.File(path, "r+") as f:
            f["m/a"]["back"] = f["m"] if damage == "hard link up" else h5py.SoftLink("/m")
        member, says = "back", "'/m/a/back' leads back to '/m', a loop"
    else:
        data = bytearray(path.read_bytes())
        at = data.find(b"zzlinkname\0")
        assert at > 0 and data.count(b"zzlinkname\0") == 1
        name = {"empty name": b"\0", "name .": b".\0", "name with /": b"z/"}[damage]
        data[at:at + len(name)] = name
        path.write_bytes(bytes(data))
        member = {"empty name": "", "name .": ".", "name with /": "z/linkname"}[damage]
        says = f"group '/m/a' has a member named '{member}', a name no HDF5 file can hold"
    # and the save's copy unreadable, as a kill can leave it: alone, that is what the rewrite drops
    data = bytearray(path.read_bytes())
    assert data[copy_header] == 1  # version 1 object header
    data[copy_header] = 7
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    s = qa.ResultStore(str(path), "r")
    assert s.list("m") == ["_c", "a"]
    with pytest.raises(qinterp.Error, match=f"{path}: " + re.escape(says) + "; the file is damaged"):
        s.list("m/a")
    with pytest.raises(qinterp.Error, match=re.escape(says)):
        s.read_tensors("m/a")
    s.close()
    if damage == "soft link up":  # a soft link is copied as it is, and list() still refuses it
        assert qa.ResultStore.drop_unreadable_objects(str(path)) == ["/m/_c/f.partial"]
        with pytest.raises(qinterp.Error, match=re.escape(says)):
            qa.ResultStore(str(path), "r").list("m/a")
    else:  # other damage: left for the caller's read-back to name
        assert qa.ResultStore.drop_unreadable_objects(str(path)) == [] and path.read_bytes() == before


def test_a_rewrite_that_crashes_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """drop_unreadable_objects copies the file with HDF5, which can crash on damage it does not
    check (a double free in its chunk copy, found by fuzzing, seed 91). The copy runs in a child
    process: a crash there must leave the file as it was, and the caller running."""
    path = tmp_path / "s.h5"
    store_with_a_save_copy(path)
    with h5py.File(path, "r") as f:
        copy_header = h5py.h5o.get_info(f["m/_c/f.partial"].id).addr
    data = bytearray(path.read_bytes())
    data[copy_header] = 7  # the save's copy unreadable, as a kill can leave it
    path.write_bytes(bytes(data))
    monkeypatch.setenv("QINTERP_CRASH_IN_REWRITE", "1")  # the child dies once its copy is written
    assert qa.ResultStore.drop_unreadable_objects(str(path)) == []
    assert path.read_bytes() == bytes(data) and not (tmp_path / "s.h5.rewrite").exists()
    monkeypatch.delenv("QINTERP_CRASH_IN_REWRITE")
    assert qa.ResultStore.drop_unreadable_objects(str(path)) == ["/m/_c/f.partial"]
    assert qa.ResultStore(str(path), "r").read("m/a/x").tolist() == [0.0, 1.0, 2.0]


def header_messages(data, addr):
    """(type, first data byte, size) of each message of the version 1 object header at addr."""
    le = lambda at, n: int.from_bytes(data[at:at + n], "little")
    assert data[addr] == 1
    chunks, out = [(addr + 16, le(addr + 8, 4))], []
    while chunks:
        start, length = chunks.pop(0)
        at = start
        while at + 8 <= start + length:
            kind, size = le(at, 2), le(at + 2, 2)
            out.append((kind, at + 8, size))
            if kind == 0x10:
                chunks.append((le(at + 8, 8), le(at + 16, 8)))
            at += 8 + size
    return out


@pytest.mark.parametrize("damage,says", [
    ("name without its NUL", "its name is not a string of the stored length"),
    ("datatype size field 0xFFFF", "its parts are larger than the message"),
    ("datatype class enum", "its datatype is cut short"),
    ("datatype of 0 bytes", "its datatype has size 0"),
    ("dataspace version 7", "its dataspace has version 7"),
    ("dataspace rank 33", "its dataspace has rank 33"),
    ("datatype of 1 MiB", "its value is larger than the message holds"),
])
def test_damaged_attribute_messages_are_errors_not_crashes(tmp_path, damage, says):
    """HDF5 1.10 decodes all of an object's attributes before it hands out one; when one fails it
    frees the half-built table and crashed now and then (found by scripts/fuzz_files.py, seeds 80
    and 92). Each attribute message is now checked first."""
    path = tmp_path / "a.h5"
    s = qa.ResultStore(str(path), "w")
    s.set_attrs("g", {"zzattr": 5, "other": "text"})
    s.close()
    data = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f["g"].id).addr
    m = next(at for kind, at, size in header_messages(data, addr)
             if kind == 0x0C and data[at + 8:at + 15] == b"zzattr\0")
    assert data[m] == 1  # version 1 attribute message: name, datatype and dataspace padded to 8
    dt, ds = m + 16, m + 16 + 16  # "zzattr\0" pads to 8 bytes; the int64 datatype to 16
    if damage == "name without its NUL":
        data[m + 14] = ord("x")
    elif damage == "datatype size field 0xFFFF":
        data[m + 4:m + 6] = b"\xff\xff"
    elif damage == "datatype class enum":
        data[dt] = (data[dt] & 0xF0) | 8
    elif damage == "datatype of 0 bytes":
        data[dt + 4:dt + 8] = bytes(4)
    elif damage == "dataspace version 7":
        data[ds] = 7
    elif damage == "dataspace rank 33":
        assert data[ds] == 1 and data[ds + 1] == 0  # version 1, scalar
        data[ds + 1] = 33
    else:
        data[dt + 4:dt + 8] = (1 << 20).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    who = r"#\d+" if damage == "name without its NUL" else "zzattr"  # counted when the name is lost
    with pytest.raises(qinterp.Error, match=f"{path}: attribute '{who}' of 'g': " + re.escape(says)):
        qa.ResultStore(str(path), "r").attrs("g")


def test_attributes_of_every_kind_h5py_writes_pass_the_checks(tmp_path):
    """The checks above must not refuse what h5py writes: every kind of attribute is walked (those
    that are not scalar numbers or strings are left out of attrs(), as before)."""
    path = tmp_path / "kinds.h5"
    with h5py.File(path, "w") as f:
        a = f.create_group("g").attrs
        a["b"], a["i8"], a["u64"], a["f16"] = True, np.int8(-3), np.uint64(7), np.float16(1.5)
        a["s"], a["fs"], a["arr"], a["sarr"] = "text", np.bytes_(b"fixed"), np.arange(5), ["a", "bb"]
        a["cpx"] = np.complex64(1 + 2j)
        a["cmp"] = np.array((1, 2.0), dtype=[("x", "i4"), ("y", "f8")])
        a["en"] = np.array(2, dtype=h5py.enum_dtype({"R": 0, "G": 1, "B": 2}, basetype="i1"))
        a["op"] = np.void(b"\x01\x02\x03")
        a["ar"] = np.zeros((), dtype=np.dtype(("i4", (2, 3))))
        v = np.empty(2, dtype=h5py.vlen_dtype("i4"))
        v[0], v[1] = np.arange(3), np.arange(1)
        a["vl"] = v
        a["ref"] = f["g"].ref
        a["empty"] = h5py.Empty("f4")
    assert qa.ResultStore(str(path), "r").attrs("g") == {"f16": 1.5, "fs": "fixed", "i8": -3, "s": "text", "u64": 7}


def group_tables(data, path, group):
    """(B-tree address, local heap address) of an old-style group, from its symbol table message."""
    with h5py.File(path, "r") as f:
        addr = h5py.h5o.get_info(f[group].id).addr
    at = next(at for kind, at, size in header_messages(data, addr) if kind == 0x11)
    return int.from_bytes(data[at:at + 8], "little"), int.from_bytes(data[at + 8:at + 16], "little")


@pytest.mark.parametrize("damage", ["free list loop", "link name offset", "header chunk outside the file"])
def test_damaged_link_tables_are_errors_not_hangs(tmp_path, damage):
    """A free block of a group's local heap that points back to itself made HDF5 allocate forever
    as it listed the group (a hang; found by fuzzing, seed 91); a link name offset beyond the heap
    (seed 80), and a member whose object header continues past the end of the file (seed 97),
    made it read out of bounds. list() now checks all three first."""
    path = tmp_path / "t.h5"
    s = qa.ResultStore(str(path), "w")
    for k in range(3):
        s.write(f"g/x{k}", torch.arange(3.0))
    s.close()
    with h5py.File(path, "r+") as f:
        del f["g/x1"]  # frees its name in the heap: the free list has a block
    data = bytearray(path.read_bytes())
    tree, heap = group_tables(data, path, "g")
    le = lambda at, n: int.from_bytes(data[at:at + n], "little")
    assert data[heap:heap + 4] == b"HEAP" and data[tree:tree + 4] == b"TREE"
    if damage == "free list loop":
        seg, free = le(heap + 24, 8), le(heap + 16, 8)
        assert free != 1, "no free block to damage"
        data[seg + free:seg + free + 8] = free.to_bytes(8, "little")  # next block: itself
        says = "group 'g': its local heap's free list is damaged"
    elif damage == "link name offset":
        snod = le(tree + 24 + 8, 8)  # the first child of a level-0 node
        assert data[snod:snod + 4] == b"SNOD"
        data[snod + 8:snod + 16] = (1 << 40).to_bytes(8, "little")  # the first entry's name offset
        says = f"group 'g': a link name offset ({1 << 40}) lies outside its local heap's data"
    else:  # a null message of g/x0's header made a continuation to beyond the end of the file
        with h5py.File(path, "r") as f:
            x0 = h5py.h5o.get_info(f["g/x0"].id).addr
        at = next(at for kind, at, size in header_messages(data, x0) if kind == 0 and size >= 16)
        data[at - 8:at - 6] = (0x10).to_bytes(2, "little")
        data[at:at + 16] = (len(data) + 4096).to_bytes(8, "little") + (512).to_bytes(8, "little")
        says = f"group 'g': a link points to byte {x0}, where there is no sound object header"
    path.write_bytes(bytes(data))
    with pytest.raises(qinterp.Error, match=f"{path}: " + re.escape(says) + "; the file is damaged"):
        qa.ResultStore(str(path), "r").list("g")


def test_reads_other_integer_widths_written_by_h5py(tmp_path):
    # int16 and uint32 are widened on reading; the checks against damage compare the file's
    # element size with its storage, not the widened one
    path = tmp_path / "h5py.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("i16", data=np.arange(-5, 5, dtype=np.int16))
        f.create_dataset("u32", data=np.arange(10, dtype=np.uint32) * 1000)
        f.create_dataset("c16", data=np.arange(4000, dtype=np.int16), chunks=(1000,), compression="gzip")
    s = qa.ResultStore(str(path), "r")
    assert s.read("i16").tolist() == list(range(-5, 5))
    assert s.read("u32").tolist() == [1000 * i for i in range(10)]
    assert s.read("c16").tolist() == list(range(4000))


def test_writes_that_would_lose_data_are_refused(tmp_path):
    path = tmp_path / "r.h5"
    with qa.ResultStore(str(path), "w") as s:
        s.write("run/layer0/hist", torch.arange(4))
        c = qa.Correlation()
        c.update(torch.randn(50, 3))
        s.save("run/state", c)
        # a dataset over a group would delete the group's contents
        with pytest.raises(qinterp.Error, match="'run/layer0' is a group; a dataset cannot replace it"):
            s.write("run/layer0", torch.zeros(2))
        with pytest.raises(qinterp.Error, match="'/run/layer0/hist' is a dataset, not a group"):
            s.write("run/layer0/hist/x", torch.zeros(2))
        with pytest.raises(qinterp.Error, match="'run/layer0/hist' is a dataset; a result cannot replace it"):
            s.save("run/layer0/hist", c)
        with pytest.raises(qinterp.Error, match="a dataset needs a name"):
            s.write("/", torch.zeros(2))
        with pytest.raises(qinterp.Error, match="does not fit in int64"):
            s.set_attrs("run", {"big": 2 ** 70})
        with pytest.raises(TypeError, match="expected an accumulator or a State"):
            s.save("run/other", 42)
        s.write("run/layer0/hist", torch.arange(5))  # a dataset over a dataset is a plain rewrite
    with h5py.File(path, "r") as f:  # nothing was lost or left half-made
        assert f["run/layer0/hist"][()].tolist() == [0, 1, 2, 3, 4]
        assert sorted(f["run"].keys()) == ["layer0", "state"]
        assert sorted(f["run/layer0"].keys()) == ["hist"]
        assert "big" not in f["run"].attrs
