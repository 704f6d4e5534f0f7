"""The workers' side of the benchmarks' step-by-step protocol, in the standard library alone (the peers' virtual
environments have neither tfclm nor TensorFlow): one timed step for each "step" line on stdin, each reply a JSON
line after `REPLY` (libraries print on stdout too)."""

import json
import resource
import sys
import time

REPLY = "@@ "


def reply(found: dict) -> None:
    print(REPLY + json.dumps(found), flush=True)


def timed_steps(step) -> int:
    """`step()` once for each "step" line on stdin, each time replied; how many, once stdin ends."""
    timed = 0
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        step()
        reply({"seconds": time.perf_counter() - start})
        timed += 1
    return timed


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
