"""Engine latency and file bytes of every run of a study, plus onnxruntime fp32 / int8 on the
float twin, merged into the study's results.csv.

    python scripts/study_latency.py STUDY_DIR [--csv PATH] [--runs DIR] [--twin-run DIR]
"""

import sys

from sbnn.pipeline.study_latency import main

if __name__ == "__main__":
    sys.exit(main())
