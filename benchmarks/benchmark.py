"""Benchmark visionkit's MobileViT against transformers, kornia and timm: ``python benchmarks/benchmark.py``.

Same as ``visionkit benchmark``; see :mod:`visionkit.contrib.benchmark` for what is measured and how.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from visionkit.contrib.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
