"""The bounded JSON loader: size, depth, non-files and invalid text, one line naming the file."""

import json
import os

import pytest

from caswit_geo.core.errors import CheckpointError, InputError
from caswit_geo.core.jsonfile import load_json, nesting_depth, parse_json, size_text


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ('"[[[["', 0),  # brackets inside strings do not nest
        ('{"a": 1}', 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('[[], [[]], []]', 3),
        ('{"k\\"[": [["]"]]}', 3),  # an escaped quote does not end the string
    ],
)
def test_nesting_depth_matches_parsed_structure(text, depth):
    def brute(v):  # depth of the parsed value, by recursion over it
        if isinstance(v, dict):
            return 1 + max((brute(x) for x in v.values()), default=0)
        if isinstance(v, list):
            return 1 + max((brute(x) for x in v), default=0)
        return 0

    assert nesting_depth(text) == depth == brute(json.loads(text))


@pytest.mark.parametrize("size, text", [(0, "0 bytes"), (812, "812 bytes"), (2048, "2.0 KiB"),
                                        (50 * 2**20, "50.0 MiB"), (3 * 2**30 // 2, "1.5 GiB")])
def test_size_text_uses_readable_units(size, text):
    assert size_text(size) == text


def test_load_json_returns_the_value(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"units": [1, 2], "name": "x"}')
    assert load_json(path, what="the job plan", max_bytes=100, max_depth=2) == {"units": [1, 2], "name": "x"}


def test_too_large_file_names_size_and_limit(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"a": "' + "x" * (3 * 2**20) + '"}')
    with pytest.raises(InputError, match=r"config\.json: config\.json is 3\.0 MiB, more than the 1\.0 MiB"):
        load_json(path, what="config.json", max_bytes=2**20, max_depth=4)


def test_deep_nesting_is_refused_before_parsing(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)  # json.loads alone raises RecursionError
    with pytest.raises(CheckpointError, match=r"deep\.json: registry nests deeper than 8 levels"):
        load_json(path, what="registry", max_bytes=2**20, max_depth=8, error=CheckpointError)


def test_invalid_json_and_binary_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1,}')
    with pytest.raises(InputError, match=r"bad\.json: the plan is not valid JSON \(.* at line 1, column 9\)"):
        load_json(bad, what="the plan", max_bytes=100, max_depth=4)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match=r"bin\.json: the plan is not UTF-8 text"):
        load_json(binary, what="the plan", max_bytes=100, max_depth=4)


def test_non_files_are_refused_without_blocking(tmp_path):
    with pytest.raises(InputError, match=r"/dev/zero: the plan is not a regular file"):
        load_json("/dev/zero", what="the plan", max_bytes=100, max_depth=4)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer
    with pytest.raises(InputError, match=r"fifo\.json: the plan is not a regular file"):
        load_json(fifo, what="the plan", max_bytes=100, max_depth=4)
    with pytest.raises(InputError, match=r"missing\.json: no such file \(the plan\)"):
        load_json(tmp_path / "missing.json", what="the plan", max_bytes=100, max_depth=4)
    with pytest.raises(InputError, match=r"is a folder, expected the plan"):
        load_json(tmp_path, what="the plan", max_bytes=100, max_depth=4)


def test_parse_json_bounds_text_fields():
    with pytest.raises(CheckpointError, match=r"m\.safetensors: checkpoint header is 2\.0 KiB, more than the 1\.0 KiB"):
        parse_json("[" + "1," * 1024 + "1]", source="m.safetensors", what="checkpoint header",
                   max_bytes=1024, max_depth=4, error=CheckpointError)
    assert parse_json('{"a": [1]}', source="m", what="h", max_bytes=1024, max_depth=2) == {"a": [1]}
