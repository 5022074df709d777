"""Builds the Python package (qinterp._C + the pure-Python files) against an already built
libqinterp, for a Python that CMake did not configure -- e.g. the GPU machine's Python 3.12,
whose torch is the same 2.11 as the one libqinterp was built against here.

    python3 scripts/build_python_ext.py --lib build/libqinterp.so.0.1.0 --out /tmp/qpy
    PYTHONPATH=/tmp/qpy python3 -c "import qinterp"

It compiles bindings/python/*.cpp with torch's extension builder (ninja, the Python headers
and torch's own pybind11), links them to the given libqinterp by path, and lays out
<out>/qinterp/{_C*.so, *.py}. The normal build (CMake, `make build`) does not use it.
"""
import argparse
import glob
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def version():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        m = re.search(r"project\(\s*qinterp\s+VERSION\s+([0-9.]+)", f.read())
    if not m:
        sys.exit("build_python_ext: no `project(qinterp VERSION x.y.z)` in CMakeLists.txt")
    return m.group(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", required=True, help="the built libqinterp shared library (a file)")
    ap.add_argument("--out", required=True, help="folder that receives qinterp/ (created)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="parallel compile jobs")
    a = ap.parse_args()
    lib = os.path.abspath(a.lib)
    if not os.path.isfile(lib):
        sys.exit(f"build_python_ext: {lib} is not a file (build libqinterp first: make build)")
    os.environ.setdefault("MAX_JOBS", str(a.jobs))
    from torch.utils import cpp_extension

    out = os.path.abspath(a.out)
    pkg = os.path.join(out, "qinterp")
    work = os.path.join(out, "_build")
    os.makedirs(pkg, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    sources = sorted(glob.glob(os.path.join(ROOT, "bindings", "python", "*.cpp")))
    print(f"building qinterp._C for Python {sys.version.split()[0]} from {len(sources)} sources, "
          f"linked to {lib}", flush=True)
    module = cpp_extension.load(
        name="_C", sources=sources, build_directory=work, verbose=False, with_cuda=False,
        extra_include_paths=[os.path.join(ROOT, "libqinterp", "include")],
        extra_cflags=["-O2", f'-DQINTERP_VERSION="{version()}"'],
        extra_ldflags=[lib, f"-Wl,-rpath,{os.path.dirname(lib)}"])
    built = module.__file__
    for old in glob.glob(os.path.join(pkg, "_C*.so")):
        os.remove(old)
    shutil.copy2(built, os.path.join(pkg, os.path.basename(built)))
    for py in glob.glob(os.path.join(ROOT, "bindings", "python", "qinterp", "*.py")):
        shutil.copy2(py, pkg)
    print(f"ok: {pkg}", flush=True)


if __name__ == "__main__":
    main()
