"""``python -m napari_cellsparse.cli``: the ``cellsparse`` command."""

import sys

from . import main

sys.exit(main())
