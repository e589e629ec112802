#!/usr/bin/env python
"""Fuzz bnfast's argument validation for a while: random arguments of random types to every
public entry point, in rounds of fresh examples. The strategies and the checks (what a call may
and may not do) live in tests/strategies.py; CI runs a fixed budget of them in
tests/test_fuzz_validation.py.

    python tools/fuzz_validation.py --seconds 600 [--seed N]   # long run, fresh examples
    pytest tests/test_fuzz_validation.py                       # CI: a fixed budget
"""
import argparse
import faulthandler
import os
import random
import sys
import time
import traceback

from hypothesis import Phase, given, settings
from hypothesis import seed as hseed

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(_ROOT, "tests"))
if __name__ == "__main__":  # run from a checkout: import the bnfast beside tools/
    sys.path.insert(0, _ROOT)

import bnfast  # noqa: E402
from strategies import HAVE_SKLEARN, OUTCOMES, SETTINGS, calls, check_one  # noqa: E402


def run(seconds, seed, examples_per_round=400, report=print):
    """Fuzz for about ``seconds``: rounds of fresh examples from seeds drawn from ``seed``."""
    rnd = random.Random(seed)
    start = time.monotonic()
    rounds = 0
    test = settings(max_examples=examples_per_round,
                    phases=[Phase.generate, Phase.shrink], **SETTINGS)(given(calls)(check_one))
    found = {}
    while time.monotonic() - start < seconds:
        round_seed = rnd.getrandbits(64)
        report(f"round {rounds} (seed {round_seed}): {sum(OUTCOMES.values())} calls so far, "
               f"{time.monotonic() - start:.0f} s")
        try:
            hseed(round_seed)(test)()
        except Exception as exc:  # noqa: BLE001 -- report it, go on with fresh examples
            for err in getattr(exc, "exceptions", [exc]):
                text = "".join(traceback.format_exception_only(type(err), err)).strip()
                first = text.splitlines()[0]
                if first not in found:
                    found[first] = (round_seed, text)
                    report(f"FOUND (round seed {round_seed}):\n{text}")
        rounds += 1
    return rounds, time.monotonic() - start, found


def summary():
    lines = []
    names = sorted({name for name, _ in OUTCOMES})
    for name in names:
        parts = ", ".join(f"{outcome} {count}" for (n, outcome), count
                          in sorted(OUTCOMES.items()) if n == name)
        lines.append(f"  {name:36s} {parts}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=None, help="seed of the round seeds")
    parser.add_argument("--examples", type=int, default=400, help="examples per round")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    print(f"bnfast {bnfast.__version__} from {os.path.dirname(bnfast.__file__)}; "
          f"seed {seed}; scikit-learn {'on' if HAVE_SKLEARN else 'off'}", flush=True)
    faulthandler.enable()
    rounds, elapsed, found = run(args.seconds, seed, examples_per_round=args.examples,
                                 report=lambda s: print(s, flush=True))
    total = sum(OUTCOMES.values())
    print(f"{len(found) or 'no'} distinct failure(s) in {elapsed:.0f} s: {rounds} rounds, "
          f"{total} calls; outcomes:\n" + summary())
    for first, (round_seed, text) in found.items():
        print(f"- {first} (round seed {round_seed})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
