#!/usr/bin/env python3
"""Reads a run's TensorBoard event files with TensorBoard's own EventAccumulator and checks them
against the run's metrics.jsonl: every numeric key of every step record (and every val_loss) is
a scalar tag there at the same step, with the value rounded to float32 (TensorBoard's
simple_value). Needs the tensorboard Python package (the GPU machine has it; CI checks the
records with our own reader in tests/test_tensorboard.cpp).

Usage: check.py RUN_DIR          exit 0 when every value matches, 1 otherwise.
"""
import json
import math
import struct
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def expected_scalars(metrics_path):
    expected = {}  # (tag, step) -> value
    for line in open(metrics_path):
        record = json.loads(line)
        step = record.get("step")
        if step is None:
            continue
        for key, value in record.items():
            if key in ("step", "time", "elapsed_s") or isinstance(value, bool):
                continue  # the record's clock is not a TensorBoard scalar
            if isinstance(value, (int, float)):
                expected[(key, int(step))] = float(value)
            elif isinstance(value, list):  # per layer, or per layer and expert
                for layer, item in enumerate(value):
                    if isinstance(item, list):
                        for expert, v in enumerate(item):
                            expected[(f"{key}/layer{layer}/expert{expert}", int(step))] = float(v)
                    elif isinstance(item, (int, float)):
                        expected[(f"{key}/layer{layer}", int(step))] = float(item)
    return expected


def main():
    run_dir = Path(sys.argv[1])
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    found = {}
    for tag in tags:
        for event in accumulator.Scalars(tag):
            found[(tag, event.step)] = event.value
    expected = expected_scalars(run_dir / "metrics.jsonl")
    missing, wrong, matched = [], [], 0
    for (tag, step), value in sorted(expected.items()):
        if (tag, step) not in found:
            missing.append((tag, step))
            continue
        got = found[(tag, step)]
        want = f32(value)
        if not (got == want or (math.isnan(got) and math.isnan(want))):
            wrong.append((tag, step, got, want))
        else:
            matched += 1
    print(f"tensorboard read-back: {len(tags)} tags, {len(found)} scalars in the event files, "
          f"{len(expected)} numeric values in metrics.jsonl; {matched} match, "
          f"{len(missing)} missing, {len(wrong)} differ")
    for tag, step in missing[:10]:
        print(f"  missing: {tag} at step {step}")
    for tag, step, got, want in wrong[:10]:
        print(f"  differs: {tag} at step {step}: event file {got!r}, metrics.jsonl {want!r}")
    return 0 if matched > 0 and not missing and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
