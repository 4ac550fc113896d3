"""Benchmark visionkit's MobileViT against transformers, kornia and timm: ``python benchmarks/benchmark.py``.

Same as ``visionkit benchmark`` (it runs that command, with its options and its one-line errors); see
:mod:`visionkit.contrib.benchmark` for what is measured and how.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from visionkit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
