"""The benchmark environment: a virtual environment with the peers, and machine facts.

The peers (Authlib and httpx-auth) are not dependencies of tokenflight, so the benchmarks
install them, with tokenflight from this checkout, into ``bench/.venv`` and run every
measurement there: the baseline, tokenflight and the peers then share one httpx.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["BENCH_REQUIREMENTS", "ensure_environment", "machine_facts", "package_versions"]

# Pinned so that figures from different runs compare. httpx-auth 0.23.1 requires
# httpx 0.28, which therefore is the httpx every variant runs on.
BENCH_REQUIREMENTS = (
    "Authlib==1.9.10",
    "httpx-auth==0.23.1",
    "trio>=0.25",
)

PACKAGES = (
    "tokenflight",
    "httpx",
    "httpcore",
    "anyio",
    "trio",
    "Authlib",
    "httpx-auth",
    "PyJWT",
    "cryptography",
)


def _requirements_stamp(root: Path) -> str:
    pyproject = (root / "pyproject.toml").read_bytes()
    digest = hashlib.sha256(pyproject).hexdigest()[:16]
    return "\n".join([*BENCH_REQUIREMENTS, f"pyproject.toml sha256 {digest}", ""])


def ensure_environment(root: Path) -> Path:
    """Create or update ``bench/.venv`` and return its Python interpreter.

    It is rebuilt only when the pinned requirements or tokenflight's ``pyproject.toml``
    changed; tokenflight is installed in editable mode, so source changes need no rebuild.
    """
    venv = root / "bench" / ".venv"
    python = venv / "bin" / "python"
    stamp_path = venv / "bench-requirements.txt"
    stamp = _requirements_stamp(root)
    if python.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return python

    print(f"bench: creating {venv} with {', '.join(BENCH_REQUIREMENTS)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "-e", str(root), *BENCH_REQUIREMENTS],
        check=True,
    )
    stamp_path.write_text(stamp)
    return python


def package_versions() -> dict[str, str]:
    """Return the installed version of each package the figures depend on."""
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
                    return f"{kib / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine_facts() -> dict[str, str]:
    """Return the CPU, core count, memory, OS and Python of this machine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "cores": str(cores),
        "memory": _memory_total(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }
