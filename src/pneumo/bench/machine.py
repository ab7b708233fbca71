"""The machine a benchmark ran on, and a process's memory, for the report."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def machine_description() -> dict:
    """CPU, cores, memory, OS and library versions, for the report."""
    info = {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if model:
            info["cpu"] = model.group(1).strip()
        flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
        if flags:
            wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
            present = set(flags.group(1).split())
            info["isa"] = " ".join(flag for flag in wanted if flag in present)
        memory = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if memory:
            info["memory_gib"] = round(int(memory.group(1)) / 2**20, 1)
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for name in ("numpy", "tensorflow", "keras", "onnxruntime", "onnx", "tf2onnx", "pillow",
                 "flask", "waitress"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info["libraries"] = versions
    return info


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def memory_of(pid: int) -> tuple[float, float]:
    """(resident, peak resident) bytes of a process, from /proc (NaN elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan"), float("nan")
    values = {key: int(re.search(rf"^{key}:\s*(\d+) kB", text, re.M).group(1)) * 1024
              for key in ("VmRSS", "VmHWM")}
    return float(values["VmRSS"]), float(values["VmHWM"])
