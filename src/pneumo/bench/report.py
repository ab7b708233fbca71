"""The benchmark's rows, its targets (ratios measured in the same run) and its
text and Markdown renderings."""

from __future__ import annotations

import dataclasses
import math
import sys


#: The issue's targets, as ratios measured in the same run.
TARGET_API_VS_BARE = 1.3  # API p50 with heatmap <= 1.3x the bare single-image forward pass
TARGET_NAIVE_VS_API = 2.5  # ... and at least 2.5x faster than the naive pattern
TARGET_PREDICT_VS_BATCHED = 0.85  # pneumo predict >= 0.85x the bare batched throughput
TARGET_CLIENTS_VS_BATCHED = 0.8  # N concurrent clients >= 0.8x the bare batched throughput
TARGET_READY_SECONDS = 5.0
TARGET_MEMORY_BYTES = 2**30


@dataclasses.dataclass
class Row:
    what: str
    value: float
    unit: str  # "ms", "s", "img/s" or "MB"
    detail: str = ""

    def shown(self) -> str:
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return "n/a"
        digits = 2 if self.unit == "s" else 1
        return f"{self.value:.{digits}f} {self.unit}"


@dataclasses.dataclass
class Report:
    machine: dict
    rows: list[Row] = dataclasses.field(default_factory=list)
    targets: list[tuple[str, str, bool | None]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, what: str, value: float, unit: str, detail: str = "") -> Row:
        row = Row(what, value, unit, detail)
        self.rows.append(row)
        print(f"  {what}: {row.shown()}  {detail}", file=sys.stderr, flush=True)
        return row


def check_targets(report: Report, bare: dict, naive: float, served: dict, predicted: float,
             clients: int) -> None:
    def check(name: str, ratio: float, shown: str, met: bool) -> None:
        report.targets.append((name, shown, None if math.isnan(ratio) else met))

    ratio = served["p50"] / served.get("bare_latency", bare["latency"])
    check(f"API p50 with heatmap <= {TARGET_API_VS_BARE}x bare single-image forward", ratio,
          f"{ratio:.2f}x", ratio <= TARGET_API_VS_BARE)
    ratio = naive / served["p50"]
    check(f"API p50 at least {TARGET_NAIVE_VS_API}x faster than the naive pattern", ratio,
          f"{ratio:.1f}x", ratio >= TARGET_NAIVE_VS_API)
    ratio = predicted / served.get("bare_throughput_predict", bare["throughput"])
    check(f"pneumo predict >= {TARGET_PREDICT_VS_BATCHED}x bare batched throughput", ratio,
          f"{ratio:.2f}x", ratio >= TARGET_PREDICT_VS_BATCHED)
    ratio = served["clients"] / served.get("bare_throughput", bare["throughput"])
    check(f"{clients} concurrent clients >= {TARGET_CLIENTS_VS_BATCHED}x bare batched "
          "throughput", ratio, f"{ratio:.2f}x", ratio >= TARGET_CLIENTS_VS_BATCHED)
    check(f"ready to serve within {TARGET_READY_SECONDS:g} s of launch", served["ready"],
          f"{served['ready']:.2f} s", served["ready"] <= TARGET_READY_SECONDS)
    memory = served["memory"]
    check("under 1 GB resident memory per worker", memory, f"{memory / 2**20:.0f} MB",
          memory < TARGET_MEMORY_BYTES)


# -- output -----------------------------------------------------------------------------

def render_text(report: Report) -> str:
    width = max(len(row.what) for row in report.rows)
    lines = [f"{'measurement':<{width}}  {'value':>12}  detail"]
    lines += [f"{row.what:<{width}}  {row.shown():>12}  {row.detail}" for row in report.rows]
    lines.append("")
    lines += [f"{'met' if met else 'NOT met' if met is not None else 'n/a':>7}  {shown:>9}  "
              f"{name}" for name, shown, met in report.targets]
    lines += ["", *report.notes, _machine_line(report.machine)]
    return "\n".join(lines) + "\n"


def _machine_line(machine: dict) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    return (f"machine: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs "
            f"({machine.get('isa', '')}), {machine.get('memory_gib', '?')} GiB; "
            f"{machine.get('os')}; Python {machine.get('python')}; {libraries}; load average "
            f"{machine.get('load_average_start')} at start, {machine.get('load_average_end')} "
            f"at end; model {machine.get('model')}, input {machine.get('model_input')}px")


def render_markdown(report: Report) -> str:
    lines = ["| measurement | value | detail |", "|---|---:|---|"]
    lines += [f"| {row.what} | {row.shown()} | {row.detail} |" for row in report.rows]
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {name} | {shown} | {'yes' if met else 'no' if met is not None else 'n/a'} |"
              for name, shown, met in report.targets]
    machine = report.machine
    libraries = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items())
    lines += ["", *report.notes, "",
              f"- CPU: {machine.get('cpu')}, {machine.get('logical_cpus')} logical CPUs; "
              f"instruction sets: {machine.get('isa', 'n/a')}; "
              f"{machine.get('memory_gib', '?')} GiB memory",
              f"- OS: {machine.get('os')}; Python {machine.get('python')}",
              f"- libraries: {libraries}",
              f"- model: {machine.get('model')}, input {machine.get('model_input')}x"
              f"{machine.get('model_input')}",
              f"- load average (1, 5, 15 min): {machine.get('load_average_start')} at the "
              f"start, {machine.get('load_average_end')} at the end"]
    return "\n".join(lines) + "\n"
