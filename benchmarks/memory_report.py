"""Peak-memory tables for the tiny GPT: fedcore against PyTorch, and LoRA against full tuning.

Each figure comes from a fresh interpreter (`python -m benchmarks.modern WHAT`), so one run's
allocations cannot hide another's; see that module for what `base` and `peak` mean.
"""

from __future__ import annotations

import json
import subprocess
import sys

SEQS = (256, 512, 1024, 2048)


def measure(what: str, seq: int, batch: int) -> dict:
    """One figure, from a child process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.modern", what, "--seq", str(seq),
                          "--batch", str(batch)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(label: str, r: dict) -> str:
    return (f"  {label:28s} peak RSS {r['peak_mb']:7.1f} MB, training adds "
            f"{r['peak_mb'] - r['base_mb']:7.1f} MB")


def memory_report(cases: list[str]) -> None:
    """Print the tables for `cases` (gpt: model step and attention sweep; lora)."""
    if "gpt" in cases:
        print("tiny GPT (d 256, 4 layers, 8 heads, 2 KV heads), batch 8, T 128, one thread:")
        ours = measure("gpt-fedcore", 128, 8)
        for label, what in (("fedcore", "gpt-fedcore"), ("torch (SDPA)", "gpt-torch-sdpa")):
            r = ours if what == "gpt-fedcore" else measure(what, 128, 8)
            print(_row(label, r))
            if r is not ours:
                added = (ours["peak_mb"] - ours["base_mb"]) / (r["peak_mb"] - r["base_mb"])
                print(f"    ratio fedcore/torch: peak {ours['peak_mb'] / r['peak_mb']:.2f}, "
                      f"added {added:.2f} (target <= 0.3)")
        print("attention memory, batch 1 (training adds, MB):")
        print(f"  {'T':>6s} {'fedcore':>9s} {'torch eager':>12s} {'torch SDPA':>11s}")
        for t in SEQS:
            f, e, s = (measure(w, t, 1) for w in ("gpt-fedcore", "gpt-torch", "gpt-torch-sdpa"))
            print(f"  {t:6d} {f['peak_mb'] - f['base_mb']:9.1f} {e['peak_mb'] - e['base_mb']:12.1f}"
                  f" {s['peak_mb'] - s['base_mb']:11.1f}")
    if "lora" in cases:
        print("LoRA rank 8 on attn + mlp vs full fine-tuning (fedcore), batch 8, T 128:")
        full = measure("full", 128, 8)
        print(_row("full fine-tuning", full))
        for what, label in (("lora-float32", "LoRA, float32 base"),
                            ("lora-int8", "LoRA, int8 base"),
                            ("lora-int8-ffa", "LoRA, int8 base, A frozen")):
            r = measure(what, 128, 8)
            print(_row(label, r))
            added = (r["peak_mb"] - r["base_mb"]) / (full["peak_mb"] - full["base_mb"])
            print(f"    peak ratio to full {r['peak_mb'] / full['peak_mb']:.2f} (target <= 0.4), "
                  f"added {added:.2f}; "
                  f"update {r['trained_params']} of {r['model_params']} values = "
                  f"{100 * r['trained_params'] / r['model_params']:.1f} % of the float32 model "
                  f"(target <= 3 %)")
