"""The qinterp command line from Python: `python -m qinterp ...` (and the `qinterp` console script
that `pip install .` puts on PATH) run the same commands as the C++ tool.

Under torchrun (`torchrun --nproc-per-node N -m qinterp run ...`) every process runs its shard of
the examples and the states are merged exactly through torch.distributed (gloo on the CPU, NCCL on
CUDA); rank 0 writes the file. See docs/runner.md.
"""
import os
import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("QINTERP_PYTHON", sys.executable)  # `report --figures` runs this Python
    import qinterp
    from qinterp import _C
    from qinterp._distributed import comm, world

    rank, size = world()
    if size > 1 and argv[:1] == ["run"]:
        device = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"), "cpu")
        return _C.cli_main(["qinterp"] + argv, rank, size, comm(device))
    return _C.cli_main(["qinterp"] + argv)


if __name__ == "__main__":
    sys.exit(main())
