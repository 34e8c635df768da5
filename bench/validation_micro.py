"""What validating a `state:set` request costs: into a pydantic model instance, or into a dict.

    python bench/validation_micro.py [--rounds 30 --calls 3000]

The state plugin's request schema (`SetRequest`, a TypedDict since session 4) against a pydantic
model with the same fields and constraints (what it was before), each validated the way the
router does: pydantic-core's `validate_python`, no Python wrapper. The two alternate in short
rounds, so a machine that speeds up or slows down affects both; the ratio is the median of the
per-round ratios.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ksi_daemon.event_system import validator_of
from ksi_daemon.plugins.state.models import MAX_TTL_S, Key, Namespace, SetRequest

REQUEST = {"key": "bench-1", "value": {"n": 5, "text": "payload"}, "namespace": "bench"}


class SetRequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: Key
    value: Any
    namespace: Namespace = "global"
    ttl_s: float | None = Field(None, gt=0, le=MAX_TTL_S)
    if_version: int | None = Field(None, ge=0)


def microseconds_per_call(validate, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        validate(REQUEST)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    candidates = {"model instance": validator_of(SetRequestModel),
                  "TypedDict (dict)": validator_of(SetRequest)}
    runs: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, validate in candidates.items():
            runs[name].append(microseconds_per_call(validate, args.calls))
    baseline = runs["model instance"]
    print(f"state:set request validation, {args.rounds} rounds × {args.calls} calls (medians)")
    for name, times in runs.items():
        ratio = statistics.median(t / b for t, b in zip(times, baseline))
        print(f"{name:18s} {statistics.median(times):5.2f} µs/request   ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
