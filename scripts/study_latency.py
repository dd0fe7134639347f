"""Engine latency and file bytes of every run of a study, plus onnxruntime fp32 / int8 on the
float twin, merged into the study's results.csv (:mod:`sbnn.pipeline.study_latency`).

    python scripts/study_latency.py STUDY_DIR [--csv PATH] [--runs DIR] [--twin-run DIR]
"""

import argparse
import sys

from sbnn.pipeline.study_latency import measure_study


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="study_latency.py",
        description="Engine latency (batch 1, 1 thread) and .sbnn file size of every run of a "
                    "study, plus onnxruntime fp32 / int8 on the float twin, merged into the "
                    "study's results.csv (see sbnn.pipeline.study_latency).")
    p.add_argument("study", help="the study folder (results.csv, runs/)")
    p.add_argument("--csv", help="the CSV to update (default: STUDY/results.csv)")
    p.add_argument("--runs", action="append", default=[], metavar="DIR",
                   help="another folder holding run folders by name (repeatable)")
    p.add_argument("--twin-run", help="a trained float twin's run folder (default: the study's "
                                      "fp row, else a random-init twin: latency only)")
    p.add_argument("--best-of", type=int, default=10, help="rounds; the best median is kept")
    p.add_argument("--repeat", type=int, default=15, help="timed calls per round")
    p.add_argument("--no-ort", action="store_true", help="skip the onnxruntime baselines")
    p.add_argument("--data-root", help="the data set's folder (for the twin's accuracy)")
    args = p.parse_args(argv)
    try:
        measure_study(args.study, args.csv, args.runs, args.twin_run, args.best_of, args.repeat,
                      ort=not args.no_ort, data_root=args.data_root)
    except ValueError as e:
        print(f"study_latency: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
