"""Download the wheels the offline GPU run (run.sh) installs: a notebook kernel and MyST's reader.

    python examples/gpu-runs/bundle.py examples/gpu-runs/wheels    # for the GPU box (nox -s gpu-bundle)
    python examples/gpu-runs/bundle.py --current /tmp/wheels       # for this interpreter (the CI test)

The GPU box has Python 3.12, torch, numpy, scipy, matplotlib, pandas, tensorboard, psutil and
nvidia-ml-py, and no network. To execute a MyST notebook the way the site build does it needs:

- ``nbclient`` and ``ipykernel`` (with their dependencies: IPython, jupyter-client, pyzmq, ...):
  a real kernel, so figures, displays and glue records come out as in the site build;
- ``myst-nb``'s reader (``myst_nb.core.read``) and ``myst-parser``'s config, downloaded without their
  dependencies (they declare Sphinx and jupyter-cache, which the reader never imports), plus what the
  reader imports: ``docutils``, ``markdown-it-py``, ``mdit-py-plugins``, ``pyyaml``.

Versions come from constraints.txt. Binary wheels only; by default for CPython 3.12 on manylinux
x86-64. The folder must stay under 64 MiB (asserted) and never holds torch or a CUDA library.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
MAX_BYTES = 64 * 2**20
WITH_DEPS = ("nbclient", "ipykernel", "pyyaml", "docutils", "markdown-it-py", "mdit-py-plugins")
NO_DEPS = ("myst-nb", "myst-parser")  # their Sphinx and jupyter-cache requirements are never imported
FORBIDDEN = re.compile(r"^((torch|triton|numpy|scipy|matplotlib)-\d|nvidia_)", re.I)  # on the box already
GPU_BOX = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"] + [
    a for tag in ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64",
                  "manylinux_2_34_x86_64") for a in ("--platform", tag)
]


def download(dest: Path, current: bool = False) -> list[Path]:
    """Fill ``dest`` with the wheels; return them. Raises if the folder would exceed 64 MiB."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "-q", "-d", str(dest)]
    target = [] if current else GPU_BOX
    subprocess.run([*pip, *target, "-c", str(LOCK), *WITH_DEPS], check=True)
    subprocess.run([*pip, *target, "-c", str(LOCK), "--no-deps", *NO_DEPS], check=True)
    wheels = sorted(dest.glob("*.whl"))
    forbidden = [w.name for w in wheels if FORBIDDEN.match(w.name)]
    if forbidden:
        raise RuntimeError(f"the bundle must not hold packages the GPU box already has: {forbidden}")
    total = sum(w.stat().st_size for w in wheels)
    if total > MAX_BYTES:
        raise RuntimeError(f"bundle is {total / 2**20:.1f} MiB, over the 64 MiB limit")
    lines = [f"{w.stat().st_size:>10}  {w.name}" for w in wheels]
    (dest / "MANIFEST.txt").write_text(
        "\n".join(lines) + f"\n{total:>10}  total ({total / 2**20:.1f} MiB, {len(wheels)} wheels)\n",
        encoding="utf-8",
    )
    return wheels


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dest", type=Path)
    parser.add_argument("--current", action="store_true",
                        help="wheels for this interpreter, not CPython 3.12 on manylinux x86-64")
    args = parser.parse_args()
    wheels = download(args.dest, current=args.current)
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {args.dest} (limit 64 MiB): see MANIFEST.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
