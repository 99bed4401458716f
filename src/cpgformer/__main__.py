"""``python -m cpgformer``: the command-line tool (same as ``cpgformer``)."""

import sys

from cpgformer.cli import main

sys.exit(main())
