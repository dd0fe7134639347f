"""One measured curve from 100 % ones (the authors' start and penalty): the ones fraction and
test accuracy per epoch as ones_curve.csv + ones_curve.png in the run folder.

    python scripts/ones_from_full.py -c docs/study_domains/penalty/config.yaml --ec 0.05 \
        --epochs 20 --stop-after 2 --out docs/study_domains/penalty/ones_from_full
"""

import sys

from sbnn.pipeline.ones_curve import main

if __name__ == "__main__":
    sys.exit(main())
