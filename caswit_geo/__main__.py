"""``python -m caswit_geo ...`` is ``caswit-geo ...`` (e.g. ``torchrun -m caswit_geo train ...``)."""

from caswit_geo.cli import main

main()
