"""Regenerate a domain-study README and its figures from its CSVs.

    python scripts/study_report.py [STUDY_DIR]                      # the primary grid
    python scripts/study_report.py --kind penalty docs/study_domains/penalty
    python scripts/study_report.py --kind subbit docs/study_domains/subbit
"""

import argparse
import sys

from sbnn.pipeline.study_secondary import KINDS, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="study_report.py",
        description="Regenerate a domain-study README and its figures from its CSVs.")
    p.add_argument("--kind", choices=sorted(KINDS), default="primary",
                   help="which part of the study: the primary grid (default), the penalty grid "
                        "or the trained Sub-bit comparison")
    p.add_argument("dir", nargs="?", help="the study folder (default: the kind's folder under "
                                          "docs/study_domains)")
    args = p.parse_args(argv)
    try:
        path = report(args.kind, args.dir)
    except ValueError as e:
        print(f"study_report: error: {e}", file=sys.stderr)
        return 2
    print(f"study report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
