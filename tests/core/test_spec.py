"""The input spec's rule of whether imagery's data type fits its value scale."""

import pytest

from caswit_geo.core.spec import scale_warning

TOO_SMALL = "(8-bit or less): its values reach far above 1"
TOO_LARGE = "(more than 8-bit): values never reach 1"


@pytest.mark.parametrize("dtype, scale, expected", [
    ("uint8", 255, None),
    ("uint8", 100, None),  # 8-bit data of a smaller range (e.g. percentages) may fill its scale
    ("uint8", 1, None),
    ("uint8", 256, TOO_LARGE),
    ("uint8", 65535, TOO_LARGE),
    ("int8", 65535, TOO_LARGE),
    ("uint16", 255, TOO_SMALL),
    ("uint16", 1, TOO_SMALL),
    ("uint16", 256, None),
    ("uint16", 4095, None),  # 12-bit sensors
    ("uint16", 65535, None),
    ("int16", 255, TOO_SMALL),  # a signed 16-bit raster normalised as 8-bit: a mistake as for uint16
    ("int16", 1, TOO_SMALL),
    ("int16", 65535, None),
    ("uint32", 255, TOO_SMALL),
    ("int32", 1, TOO_SMALL),
    ("float32", 255, None),  # floats hold any range: reflectances, 0..255, ...
    ("float32", 65535, None),
    ("float32", 1, None),
    ("float64", 1, None),
])
def test_scale_warning_table(dtype, scale, expected):
    warning = scale_warning(dtype, float(scale))
    if expected is None:
        assert warning is None
    else:
        assert warning == f"{dtype} imagery but a value scale of {scale:g} {expected}"
