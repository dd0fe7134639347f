"""One measured curve from 100 % ones (the authors' start and penalty): the ones fraction and
test accuracy per epoch as ones_curve.csv + ones_curve.png in the run folder.

    python scripts/ones_from_full.py -c docs/study_domains/penalty/config.yaml --ec 0.05 \
        --epochs 20 --stop-after 2 --out docs/study_domains/penalty/ones_from_full
"""

import argparse
import sys
from pathlib import Path

from sbnn.pipeline.ones_curve import ones_curve, write_curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ones_from_full.py",
        description="Train from 100 %% ones (the authors' start: sparsity.init=authors, "
                    "levels=unit, their penalty and gamma) and write the ones fraction and test "
                    "accuracy per epoch (ones_curve.csv, ones_curve.png) into --out; resumes "
                    "from --out/last.pt, so a long curve can grow a few epochs per sitting.")
    p.add_argument("--config", "-c", help="base YAML config (default: the main job)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--ec", type=float, default=0.05, help="target ones fraction")
    p.add_argument("--domain", default="learned", help="model.domain (default: learned = ab)")
    p.add_argument("--epochs", type=int, default=4, help="epochs of the whole run")
    p.add_argument("--stop-after", type=int, help="train at most this many epochs in this call")
    p.add_argument("--curve-only", action="store_true",
                   help="train nothing: only write the CSV and figure from --out's metrics")
    p.add_argument("--out", required=True, help="the run folder")
    args = p.parse_args(argv)
    try:
        if args.curve_only:
            s = write_curve(args.out, args.ec)
        else:
            from sbnn.pipeline.config import load_config

            s = ones_curve(load_config(args.config, args.set), args.out, args.epochs, args.ec,
                           args.domain, args.stop_after)
    except ValueError as e:
        print(f"ones_from_full: error: {e}", file=sys.stderr)
        return 2
    print(f"{s['epochs']} epochs: ones {s['ones_fraction']}, test accuracy "
          f"{s['test_accuracy']}; {s['note']} -> {Path(args.out) / 'ones_curve.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
