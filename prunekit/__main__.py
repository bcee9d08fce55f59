"""``python -m prunekit`` = the ``prunekit`` command."""
import sys

from .cli.main import main

sys.exit(main())
