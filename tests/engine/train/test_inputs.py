"""The InputSpec checks of a training run."""

from pathlib import Path

import pytest

from caswit_geo.core.errors import ConfigError
from caswit_geo.core.spec import InputSpec, scale_warning
from caswit_geo.data.rasters import ImagePair
from caswit_geo.engine.train.inputs import check_dtypes


def images(*dtypes: str) -> list[ImagePair]:
    return [ImagePair(f"i{n}", Path(f"i{n}.tif"), None, dtype=d) for n, d in enumerate(dtypes)]


def test_a_scale_that_does_not_fit_warns_as_predict_does():
    with pytest.warns(UserWarning) as caught:
        check_dtypes(images("int16", "int16"), InputSpec(scale=255.0), "--root data")
    (warning,) = caught
    assert str(warning.message) == f"--root data, e.g. i0.tif: {scale_warning('int16', 255.0)}; give --scale"


def test_a_scale_that_fits_is_silent(recwarn):
    check_dtypes(images("uint16"), InputSpec(scale=65535.0), "--root data")
    assert not recwarn.list


def test_mixed_data_types_are_refused():
    with pytest.raises(ConfigError, match="i0.tif is uint8 but i1.tif is uint16"):
        check_dtypes(images("uint8", "uint16"), InputSpec(), "--root data")
