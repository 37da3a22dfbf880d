"""``python -m devtools.hcloracle``: the corpus and a random corpus through both readers.

Prints each case whose readings differ and a summary line; exits 1 on any difference, 2 when Go
is missing or the oracle does not build.
"""

from __future__ import annotations

import argparse
import sys
import time

from devtools.hcloracle import REPO, Case, NoGo, ask, corpus, differences, oracle, ours
from devtools.hcloracle.fuzz import cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.hcloracle", description=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="first random seed (default 1)")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds (default 1)")
    parser.add_argument("--count", type=int, default=5000, help="random cases per seed")
    parser.add_argument("--show", type=int, default=10, help="differences shown (default 10)")
    args = parser.parse_args(argv)
    try:
        binary = oracle()
    except NoGo as exc:
        print(f"hcloracle: {exc}", file=sys.stderr)
        return 2
    seeds = list(corpus(REPO / "tests" / "hcl_corpus"))
    batches: list[tuple[str, list[Case]]] = [("corpus", seeds)]
    for seed in range(args.seed, args.seed + args.seeds):
        batches.append((f"seed {seed}", list(cases(seed, args.count, seeds))))
    failed = 0
    shown = 0
    for label, batch in batches:
        started = time.monotonic()
        differ = accepted = 0
        for case, theirs in zip(batch, ask(binary, batch), strict=True):
            accepted += "stage" not in theirs
            found = differences(ours(case), theirs)
            if not found:
                continue
            differ += 1
            if shown < args.show:
                shown += 1
                print(f"--- {case.name}: {case.text[:400]!r}")
                for line in found:
                    print(f"    {line[:400]}")
        failed += differ
        print(
            f"{label}: {len(batch)} cases, {differ} differ, SPIRE reads {accepted}"
            f" ({time.monotonic() - started:.1f} s)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
