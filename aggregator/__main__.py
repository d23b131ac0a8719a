"""Run the aggregator CLI as ``python -m aggregator``."""

import sys

from aggregator.cli import main

sys.exit(main())
