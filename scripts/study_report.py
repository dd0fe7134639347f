"""Regenerate a domain-study README and its figures from its CSVs.

    python scripts/study_report.py [STUDY_DIR]                      # the primary grid
    python scripts/study_report.py --kind penalty docs/study_domains/penalty
    python scripts/study_report.py --kind subbit docs/study_domains/subbit
"""

import sys

from sbnn.pipeline.study_secondary import main

if __name__ == "__main__":
    sys.exit(main())
