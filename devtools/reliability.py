"""``make reliability``: run the failure matrix against the emulator and print its figures.

Every row is a scenario of :mod:`devtools.scenarios` (the same functions
``tests/test_reliability.py`` asserts on): the daemon's CLI, run in-process or as subprocesses
through the AWS-faithful fault proxy, judged by the final AWS state. Columns:

* **faults injected**: what the proxy did, with counts;
* **runs**: daemon runs (CLI invocations) the row took;
* **converged**: trials whose world ended exactly as expected (e.g. ``9/9``);
* **wrongly touched**: keys that must be kept and got a mutating call they must never get, or
  ended harmed; it must be 0 on every row.

Exit status 0 when every row converged with no key wrongly touched, 1 otherwise (the problems are
printed under the table). ``--only TEXT`` runs the rows whose name contains TEXT;
``--known-bugs`` adds rows that show known daemon bugs (marked xfail in the tests).

    python -m devtools.reliability [--only kill] [--examples 20] [--seeds 4,6,9]
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from devtools import attacks, scenarios
from devtools.emulator import Emulator
from devtools.faultproxy import FaultProxy
from devtools.scenarios import Harness, ScenarioOutcome
from devtools.spire_health import SpireHealth

Row = tuple[str, Callable[[Harness], ScenarioOutcome]]
KNOWN_BUG = "[known bug]"


def rows(examples: int, seeds: Sequence[int]) -> list[Row]:
    """The matrix, in the order it is printed."""

    def throttled(h: Harness) -> ScenarioOutcome:
        with scenarios.fast_backoff():
            trials = [scenarios.throttling(h, rate=0.5, seed=seed) for seed in seeds]
        counts = ", ".join(
            t.faults.partition(": ")[2].replace(" requests throttled", "") for t in trials
        )
        return scenarios.combine(
            "throttling on half of all calls",
            f"50% of calls, seeds {', '.join(map(str, seeds))}: {counts} requests throttled",
            trials,
        )

    def bursts(h: Harness) -> ScenarioOutcome:
        with scenarios.fast_backoff():
            return scenarios.throttling(h, bursts=True)

    def lost(h: Harness) -> ScenarioOutcome:
        with scenarios.fast_backoff():
            return scenarios.lost_answers(h)

    matrix: list[Row] = [
        ("throttling on half of all calls", throttled),
        ("throttling in bursts", bursts),
        ("answers lost after the change", lost),
        ("SIGKILL mid-run, then the next run", scenarios.kill_matrix),
        ("two daemons reclaim at once", scenarios.two_daemons),
        ("host clock 4 minutes ahead", lambda h: scenarios.clock_skew(h, 4)),
        (
            "host clock 4 minutes behind, tolerance 1m",
            lambda h: scenarios.clock_skew(h, -4, tolerance="1m"),
        ),
        ("host clock 15 days ahead", lambda h: scenarios.clock_skew(h, 15 * 24 * 60)),
        (
            "malformed and hand-edited tags",
            lambda h: scenarios.malformed_matrix(h, examples),
        ),
        ("mixed fleet, peer alias updated just now", lambda h: scenarios.mixed_fleet(h, 0)),
        ("mixed fleet, peer alias 20 days old", lambda h: scenarios.mixed_fleet(h, 20)),
        ("operator restores reclaimed keys", scenarios.operator_restore),
    ]
    for label in scenarios.DENIALS:
        matrix.append(
            (f"AccessDenied on {label}", functools.partial(scenarios.access_denied, label=label))
        )
    matrix += [
        ("attack: clock step mid-run", attacks.clock_step),
        ("attack: stale tagging index", attacks.stale_index),
        ("attack: keys SPIRE could not have made", attacks.not_spire_key),
        ("attack: retries and peers slicing the budget", attacks.retry_slicing),
        ("attack: restored keys, interrupted reclaims", attacks.restored_keys),
        ("attack: inflated denominator", attacks.inflated_denominator),
        ("attack: our alias on a dead peer's key", attacks.alias_elsewhere),
        ("attack: reload turning dry run on mid-run", attacks.dry_run_reload),
    ]
    return matrix


#: Scenarios that show daemon bugs (xfail in tests/test_reliability.py); ``--known-bugs`` adds them.
KNOWN_BUGS: list[Row] = [
    (f"{KNOWN_BUG} replica rotates an alias mid-run", scenarios.replica_rotates_alias),
]


def _converged(outcome: ScenarioOutcome) -> str:
    if outcome.trials == 1:
        return "yes" if outcome.converged else "NO"
    return f"{outcome.converged_trials}/{outcome.trials}"


def table(results: Sequence[tuple[str, ScenarioOutcome, float]]) -> str:
    """Render the results as an aligned text table."""
    headers = ["scenario", "faults injected", "runs", "converged", "wrongly touched", "time"]
    body = [
        [
            name,
            outcome.faults,
            str(outcome.runs),
            _converged(outcome),
            str(len(outcome.wrongly_touched)),
            f"{seconds:.1f}s",
        ]
        for name, outcome, seconds in results
    ]
    widths = [max(len(row[i]) for row in [headers, *body]) for i in range(len(headers))]
    right = {2, 3, 4, 5}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in body)])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix and print the table; exit 1 if any row failed."""
    parser = argparse.ArgumentParser(prog="python -m devtools.reliability", description=__doc__)
    parser.add_argument("--only", action="append", default=[], help="rows whose name has TEXT")
    parser.add_argument("--examples", type=int, default=20, help="hypothesis worlds (malformed)")
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(s) for s in text.split(",")],
        default=[4, 6, 9],
        help="seeds of the throttling row, comma-separated (default 4,6,9, as the tests)",
    )
    parser.add_argument(
        "--known-bugs",
        action="store_true",
        help="add the rows that show known daemon bugs (they do not change the exit status)",
    )
    args = parser.parse_args(argv)
    matrix = rows(args.examples, args.seeds) + (KNOWN_BUGS if args.known_bugs else [])
    chosen = [
        (name, run)
        for name, run in matrix
        if not args.only or any(text.lower() in name.lower() for text in args.only)
    ]
    if not chosen:
        parser.error("--only matched no row")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    results: list[tuple[str, ScenarioOutcome, float]] = []
    skipped: list[str] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="reliability-") as tmp,
        Emulator() as emulator,
        FaultProxy(emulator.endpoint_url, emulator=emulator, aws=True) as proxy,
        scenarios.aws_environment(emulator, Path(tmp)),
        SpireHealth() as spire,
    ):
        harness = Harness(emulator, proxy, Path(tmp), spire)
        for name, run in chosen:
            print(f"running: {name} ...", file=sys.stderr, flush=True)
            t0 = time.monotonic()
            try:
                outcome = run(harness)
            except attacks.NoFaketime as exc:
                skipped.append(f"{name}: skipped, {exc}")
                continue
            results.append((name, outcome, time.monotonic() - t0))
    print(table(results))
    for note in skipped:
        print(note)
    print(
        "\nRetry backoff is scaled by 0.05 in the throttling and lost-answer rows (every attempt "
        "is still made and counted; only the waits are shorter)."
    )
    failed = [(name, outcome) for name, outcome, _ in results if not outcome.ok]
    unexpected = [name for name, _ in failed if not name.startswith(KNOWN_BUG)]
    wrong = sum(len(outcome.wrongly_touched) for _, outcome, _ in results)
    print(
        f"\n{len(results)} scenarios, {sum(o.runs for _, o, _ in results)} daemon runs, "
        f"{len(failed)} failed, {wrong} keys wrongly touched, "
        f"{time.monotonic() - started:.0f}s"
    )
    for name, outcome in failed:
        print(f"\n== {name}\n{outcome.explain()}")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
