"""Regenerate docs/study_domains/README.md and its figure from results.csv.

    python scripts/study_report.py [STUDY_DIR]
"""

import sys

from sbnn.pipeline.study import main

if __name__ == "__main__":
    sys.exit(main())
