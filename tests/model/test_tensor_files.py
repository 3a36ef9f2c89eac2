"""The one reader of tensor files: bounds, data types, state-dict wrappers, errors naming the file."""

import pytest
import torch
from safetensors.torch import save_file

import caswit_geo.model.tensor_files as tensor_files
from caswit_geo.core.errors import CheckpointError
from caswit_geo.model.tensor_files import (
    read_safetensors_header,
    read_safetensors_tensors,
    state_dict_of,
    torch_load,
)


def test_header_then_tensors(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(3.0), "b": torch.zeros(2, 2, dtype=torch.int64)}, str(path), metadata={"k": "v"})
    header = read_safetensors_header(path)
    assert header.metadata == {"k": "v"}
    assert {k: (tuple(t.shape), t.dtype, t.device.type) for k, t in header.layout.items()} == {
        "a": ((3,), torch.float32, "meta"), "b": ((2, 2), torch.int64, "meta")}
    tensors = read_safetensors_tensors(path, header)
    assert torch.equal(tensors["a"], torch.arange(3.0)) and tensors["b"].dtype == torch.int64


def test_sizes_are_bounded_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    save_file({f"t{i}": torch.zeros(1) for i in range(5)}, str(path))
    monkeypatch.setattr(tensor_files, "MAX_TENSORS", 4)
    with pytest.raises(CheckpointError, match="w.safetensors: 5 tensors, more than the 4"):
        read_safetensors_header(path)
    with pytest.raises(CheckpointError, match=r"w.safetensors: \d+ bytes, more than the 64 bytes"):
        tensor_files.check_file_size(path, 64)
    long_name = tmp_path / "long.safetensors"
    save_file({"x" * 301: torch.zeros(1)}, str(long_name))
    with pytest.raises(CheckpointError, match="long.safetensors: invalid tensor name"):
        read_safetensors_header(long_name)


def test_data_types_outside_the_allowed_are_named(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"mask": torch.zeros(2, dtype=torch.bool)}, str(path))
    assert read_safetensors_header(path).layout["mask"].dtype == torch.bool
    with pytest.raises(CheckpointError, match="w.safetensors: tensor 'mask' has the unsupported data type BOOL"):
        read_safetensors_header(path, ("F32",))


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"a": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a valid safetensors checkpoint"):
        read_safetensors_tensors(path, read_safetensors_header(path))


@pytest.mark.parametrize("saved", [
    {"w": torch.ones(2)},
    {"state_dict": {"w": torch.ones(2)}, "meta": {"epoch": 3}},
    {"model": {"w": torch.ones(2)}, "optimizer": {}},
    {"state_dict": {"model": {"w": torch.ones(2)}}},
])
def test_state_dict_wrappers_are_unwrapped(tmp_path, saved):
    path = tmp_path / "w.pth"
    torch.save(saved, path)
    assert list(state_dict_of(torch_load(path), path)) == ["w"]


@pytest.mark.parametrize("loaded, message", [
    ([1, 2], "holds no state dict of tensors"),
    ({}, "holds no state dict of tensors"),
    ({"state_dict": {}}, "holds no state dict of tensors"),
    ({"w": torch.ones(1), "epoch": 3}, "state dict entry 'epoch' is not a tensor"),
])
def test_what_is_not_a_state_dict_is_named(tmp_path, loaded, message):
    with pytest.raises(CheckpointError, match=f"x.pth: {message}"):
        state_dict_of(loaded, tmp_path / "x.pth")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.pth: cannot be read"):
        torch_load(tmp_path / "nothing.pth")
