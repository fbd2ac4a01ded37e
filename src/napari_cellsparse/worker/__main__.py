"""``python -m napari_cellsparse.worker``: the model worker process (see :mod:`.child`)."""

from .child import main

if __name__ == "__main__":
    main()
