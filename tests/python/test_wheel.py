"""pip builds the package with scikit-build-core against the torch already installed
(--no-build-isolation), and the wheel imports and runs on its own."""
import subprocess
import sys
import zipfile

from conftest import ROOT, STORIES


def test_wheel_builds_against_installed_torch(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
                        "-w", str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = (tmp_path / "dist").glob("qinterp-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    assert "qinterp/__init__.py" in names and "qinterp/libqinterp.so" in names
    assert any(n.startswith("qinterp/_C") and n.endswith(".so") for n in names)
    (ep,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "qinterp = qinterp.__main__:main" in zipfile.ZipFile(whl).read(ep).decode()  # the `qinterp` command
    zipfile.ZipFile(whl).extractall(tmp_path / "site")
    code = ("import qinterp, torch; assert qinterp.__file__.startswith(%r); "
            "m = qinterp.load_model(%r); print(int(m.forward(torch.tensor([[1]]))[0, 0].argmax()))"
            % (str(tmp_path / "site"), str(STORIES / "stories260K.bin")))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "403"
    r = subprocess.run([sys.executable, "-m", "qinterp", "--version"], capture_output=True, text=True, timeout=300,
                       env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.startswith("qinterp 0."), r.stderr
