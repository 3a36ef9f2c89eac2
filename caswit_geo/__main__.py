"""``python -m caswit_geo ...`` is ``caswit-geo ...`` (e.g. ``torchrun -m caswit_geo train ...``)."""

from .cli import main

main()
