"""``python -m tests.upstream --saver stock|durable|tiered [--suite GLOB ...] [-k EXPR]``.

Prints counts per suite and the failing test ids; exit status 1 if any test failed.
"""

from __future__ import annotations

import argparse
import sys

from tests.upstream.harness import SAVERS, run_upstream, services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.upstream", description=__doc__)
    parser.add_argument(
        "--saver",
        choices=SAVERS,
        action="append",
        required=True,
        help="saver to test (repeat for several)",
    )
    parser.add_argument(
        "--suite",
        action="append",
        metavar="GLOB",
        help="test module, e.g. test_prune or 'langgraph/test_delta_*'",
    )
    parser.add_argument("-k", dest="keyword", help="pytest -k expression for the child runs")
    args = parser.parse_args(argv)
    failed = False
    with services() as (postgres_url, plain_redis_url):
        for saver in args.saver:
            result = run_upstream(
                saver, postgres_url=postgres_url, plain_redis_url=plain_redis_url,
                only=args.suite, keyword=args.keyword,
            )  # fmt: skip
            print("\n".join(result.summary_lines()))
            print(f"  savers opened: {result.opened}")
            for test_id in sorted(result.failures):
                print(f"  FAILED {test_id}")
            failed = failed or bool(result.failures)
            sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
