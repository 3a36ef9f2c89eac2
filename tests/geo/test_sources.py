"""What a VRT reaches: its source files (inputs an output must never replace) and its data rectangles."""

import pytest
import rasterio

from caswit_geo.core.errors import InputError
from caswit_geo.geo.sources import source_files, vrt_data_rects
from tests.helpers import rgb_image, write_on_grid


def _source(name: str, x: float, y: float, w: float, h: float, rel: int = 1) -> str:
    return (f'<SimpleSource><SourceFilename relativeToVRT="{rel}">{name}</SourceFilename><SourceBand>1</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="64" ySize="64"/>'
            f'<DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/></SimpleSource>')


def _vrt(path, width, height, *sources, band_extra="") -> None:
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><VRTRasterBand dataType="Byte" band="1">'
                    f'{"".join(sources)}{band_extra}</VRTRasterBand></VRTDataset>')


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_source_files_reach_through_nested_vrts(tmp_path):
    write_on_grid(tmp_path / "a.tif", rgb_image(64, 64))
    write_on_grid(tmp_path / "b.tif", rgb_image(64, 64, seed=1))
    _vrt(tmp_path / "inner.vrt", 64, 64, _source("b.tif", 0, 0, 64, 64))
    _vrt(tmp_path / "outer.vrt", 128, 64, _source("a.tif", 0, 0, 64, 64),
         _source(str(tmp_path / "inner.vrt"), 64, 0, 64, 64, rel=0))
    assert source_files(tmp_path / "outer.vrt") == [tmp_path / "outer.vrt", tmp_path / "a.tif",
                                                    tmp_path / "inner.vrt", tmp_path / "b.tif"]
    with rasterio.open(tmp_path / "outer.vrt") as src:  # GDAL reads the same files
        assert src.read(1).shape == (64, 128)
    assert source_files(tmp_path / "a.tif") == [tmp_path / "a.tif"]
    _vrt(tmp_path / "gone.vrt", 64, 64, _source("missing.tif", 0, 0, 64, 64))
    with pytest.raises(InputError, match="gone.vrt: source .*missing.tif: no such file"):
        source_files(tmp_path / "gone.vrt")


@pytest.mark.parametrize("sources, expected", [
    ([("a.tif", 10, 20, 30, 40), ("a.tif", 10, 20, 30, 40)], [(10, 20, 30, 40)]),  # duplicates (bands) once
    ([("a.tif", -5, -5, 10.5, 10), ("a.tif", 990, 0, 100, 1)], [(0, 0, 6, 5), (990, 0, 10, 1)]),  # clipped, rounded out
    ([("a.tif", 2000, 0, 10, 10)], None),  # nothing inside: unknown, the whole raster counts
])
def test_vrt_data_rects(tmp_path, sources, expected):
    _vrt(tmp_path / "m.vrt", 1000, 500, *(_source(*s) for s in sources))
    assert vrt_data_rects(tmp_path / "m.vrt", 100) == expected


def test_vrt_data_rects_unknown_layouts_count_as_everywhere(tmp_path):
    _vrt(tmp_path / "no_dst.vrt", 100, 100, '<SimpleSource><SourceFilename>a.tif</SourceFilename></SimpleSource>')
    assert vrt_data_rects(tmp_path / "no_dst.vrt", 100) is None
    (tmp_path / "warped.vrt").write_text('<VRTDataset rasterXSize="9" rasterYSize="9" subClass="VRTWarpedDataset"/>')
    assert vrt_data_rects(tmp_path / "warped.vrt", 100) is None
    _vrt(tmp_path / "many.vrt", 1000, 1000, *(_source("a.tif", i, 0, 1, 1) for i in range(20)))
    assert vrt_data_rects(tmp_path / "many.vrt", 10) is None  # past the limit
    assert len(vrt_data_rects(tmp_path / "many.vrt", 20)) == 20
