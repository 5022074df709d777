"""The qinterp command-line tool: generate reproduces llama2.c's greedy story byte for byte;
inspect describes the model; bad arguments give a clear message and a non-zero exit."""
import os
import pathlib
import subprocess

from conftest import ROOT, SMOLLM2, STORIES

CLI = pathlib.Path(os.environ.get("QINTERP_CLI", ROOT / "build" / "qinterp"))


def run(*args):
    return subprocess.run([str(CLI), *args], capture_output=True, timeout=300)


def test_generate_matches_llama2c():
    r = run("generate", "--model", str(STORIES / "stories260K.bin"), "--tokenizer", str(STORIES / "tok512.bin"),
            "--prompt", "", "--max-new-tokens", "200", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (STORIES / "greedy_200.txt").read_bytes()


def test_generate_finds_tokenizer_beside_model():
    r = run("generate", "--model", str(STORIES / "stories260K.bin"), "--prompt", "Once upon a time",
            "--max-new-tokens", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"Once upon a time, there was")


def test_inspect():
    r = run("inspect", "--model", str(SMOLLM2))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "layers=30" in out and "d_mlp=1536" in out and "Q4_1 x210" in out and "134515008" in out


def test_errors():
    r = run("generate", "--model", "/nonexistent.bin", "--prompt", "x")
    assert r.returncode == 1 and b"no such file" in r.stderr
    r = run("frobnicate")
    assert r.returncode == 2 and b"unknown command" in r.stderr
    r = run("generate", "--model", str(STORIES / "stories260K.bin"), "--prompt", "x", "--temperature", "hot")
    assert r.returncode == 1 and b"--temperature expects a number" in r.stderr
    model = ["--model", str(STORIES / "stories260K.bin"), "--prompt", "x"]
    for opt, value, says in [("--temperature", "-1", b"temperature must be a finite number >= 0"),
                             ("--temperature", "inf", b"temperature must be a finite number >= 0"),
                             ("--top-p", "2", b"top_p must be in (0, 1]"),
                             ("--top-p", "nan", b"top_p must be in (0, 1]"),
                             ("--max-new-tokens", "2.5", b"--max-new-tokens expects a whole number"),
                             ("--max-new-tokens", "99999999999999999999", b"--max-new-tokens expects a whole number"),
                             ("--seed", "-1", b"--seed expects a whole number")]:
        r = run("generate", *model, opt, value)
        assert r.returncode == 1 and says in r.stderr, (opt, value, r.stderr)


def test_quantize_refuses_an_unwritable_out_before_the_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "nf4", "--out", str(blocker / "q"))
    assert r.returncode == 1 and b"cannot create directory" in r.stderr, r.stderr
    assert b"[quantize] layer" not in r.stderr  # refused before any layer was quantized


def test_quantize_save_inspect_generate(tmp_path):
    import qinterp
    import torch
    out = tmp_path / "nf4"
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "nf4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert b"5/5 layers" in r.stderr
    r = run("inspect", "--model", str(out))
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert "quantization: nf4:block=64,double_quant=1,compute=fp16" in text
    assert "bytes/weight" in text and "in fp16" in text
    r = run("generate", "--model", str(out), "--tokenizer", str(STORIES / "tok512.bin"), "--prompt", "Once upon a time",
            "--max-new-tokens", "12")
    assert r.returncode == 0 and r.stdout.startswith(b"Once upon a time,"), r.stderr
    # what the CLI saved is what the library quantizes on load
    ids = torch.tensor([[1, 403, 407, 261, 378]])
    a = qinterp.load_model(out).forward(ids)
    b = qinterp.load_model(STORIES / "stories260K.bin", quant="nf4").forward(ids)
    assert torch.equal(a, b)


def test_quantize_gptq_needs_calibration(tmp_path):
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "gptq4", "--out", str(tmp_path / "g"))
    assert r.returncode == 1 and b"needs --calib" in r.stderr
    piqa = STORIES.parent.parent / "datasets/paper1/piqa.csv"
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "gptq4:calib=8,seqlen=32",
            "--calib", str(piqa), "--out", str(tmp_path / "g"))
    assert r.returncode == 0, r.stderr
    assert b"calibration: 8 random windows (seed 0) of 32 tokens" in r.stderr
    # the saved model is what the library makes from the same calibration windows
    import csv
    import qinterp
    import torch
    tok = qinterp.load_tokenizer(STORIES / "tok512.bin")
    with open(piqa, newline="") as f:
        ids = [i for row in list(csv.reader(f))[1:] for i in tok.encode(row[0])]
    calib = qinterp.random_calibration_windows(torch.tensor(ids), 8, 32, 0)  # GPTQ's loaders' windows
    saved = qinterp.load_model(tmp_path / "g")
    assert saved.quant.startswith("gptq4:group=128") and "calib=8,seqlen=32" in saved.quant
    direct = qinterp.load_model(STORIES / "stories260K.bin", quant="gptq4:calib=8,seqlen=32", calibration=calib)
    x = torch.tensor([[1, 403, 407, 261, 378]])
    assert torch.equal(saved.forward(x), direct.forward(x))
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "nf7", "--out", str(tmp_path / "x"))
    assert r.returncode == 1 and b"valid specs" in r.stderr


def test_every_command_has_help_and_errors_are_one_line(tmp_path):
    for cmd in ("generate", "inspect", "quantize", "run", "report", "version"):
        for flag in ("--help", "-h"):
            r = run(cmd, flag)
            assert r.returncode == 0 and r.stdout.startswith(b"usage: qinterp " + cmd.encode()), (cmd, r.stdout)
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith(b"qinterp 0.")
    cases = [(("inspect", "--model"), b"option --model needs a value"),
             (("inspect", "--modle", "x"), b"unknown option --modle"),
             (("inspect", "--model", "a", "--model", "b"), b"--model is given twice"),
             (("report",), b"report needs the run's file"),
             (("report", str(tmp_path / "none.h5")), b"none.h5"),
             (("generate", "--model", str(SMOLLM2), "--prompt", ""), b"the prompt encodes to no tokens"),
             (("generate", "--model", str(STORIES / "stories260K.bin"), "--tokenizer",
               str(STORIES.parent / "llama2-tokenizer" / "tokenizer.model"), "--prompt", "x"),
              b"does not belong to model")]
    for args, says in cases:
        r = run(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and says in lines[0], (args, r.stderr)


def test_quantize_leaves_nothing_on_failure_and_refuses_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "nf4", "--out", str(f))
    assert r.returncode == 1 and b"is a file" in r.stderr and b"[quantize] layer" not in r.stderr
    out = tmp_path / "q"
    r = run("quantize", "--model", str(STORIES / "stories260K.bin"), "--quant", "nf4", "--out", str(out),
            "--tokenizer", str(STORIES.parent / "llama2-tokenizer" / "tokenizer.model"))
    assert r.returncode == 1 and b"does not belong" in r.stderr
    assert not out.exists()  # the folder made for the output is removed again


def test_quantized_model_carries_its_tokenizer(tmp_path):
    for model, name, prompt in ((STORIES / "stories260K.bin", "tokenizer.bin", "Once upon a time"),
                                (SMOLLM2, "tokenizer.gguf", "The capital of France is")):
        out = tmp_path / model.stem
        r = run("quantize", "--model", str(model), "--quant", "nf4", "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert (out / name).exists()
        a = run("generate", "--model", str(out), "--prompt", prompt, "--max-new-tokens", "8")
        b = run("generate", "--model", str(model), "--quant", "nf4", "--prompt", prompt, "--max-new-tokens", "8")
        assert a.returncode == 0 and a.stdout == b.stdout and a.stdout.startswith(prompt.encode()), (a.stderr, a.stdout)
