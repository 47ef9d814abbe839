"""Write what `benchmarks/gpu_check.py` needs on a GPU machine that has PyTorch and nothing else
(no network): SmolLM2's tokenizer.json and the wheels of tmcli's other dependencies there, at
the versions installed here, into .gpu/ (under 64 MiB). `make gpu-bundle` runs it here;
`make gpu-check` there unpacks the wheels (a wheel is a zip: no pip needed) and runs the check.

The wheels are transformers, tokenizers, safetensors, numpy, orjson and what they require
(resolved from the installed packages' own metadata), minus PyTorch and what PyTorch requires
(already there). Binary wheels are for this machine's platform and ``--python`` (default: this
interpreter's version).

    python benchmarks/gpu_bundle.py [--out .gpu] [--python 3.11]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
NEEDED = ("transformers", "tokenizers", "safetensors", "numpy", "orjson")
LIMIT = 64 << 20


def _name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def closure(roots) -> set[str]:
    """The installed distributions ``roots`` require, transitively (no extras; environment
    markers as they hold here)."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [r.lower() for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in md.requires(name) or []:
            parsed = Requirement(req)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                todo.append(_name(req))
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".gpu"))
    ap.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    args = ap.parse_args()
    out = Path(args.out)
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    from tmcli.sources.tokenizers import load_tokenizer

    (out / "tokenizer.json").write_text(load_tokenizer("smollm2-135m").to_str(), encoding="utf-8")
    wanted = sorted(closure(NEEDED) - closure(["torch"]))
    pins = [f"{name}=={md.version(name)}" for name in wanted]
    print("wheels:", " ".join(pins))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", args.python, "-d", str(wheels),
                    *pins], check=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: {size / 2**20:.1f} MiB (limit {LIMIT >> 20} MiB)")
    return 0 if size <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
