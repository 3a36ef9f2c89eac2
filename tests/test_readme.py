"""The README's Python examples: every ```python block, run in order as one session, in a scratch folder."""

import ast
import re
from pathlib import Path

import caswit_geo

README = Path(__file__).resolve().parents[1] / "README.md"
# The one statement that needs a file the reader downloads first (ImageNet Swin-B weights, 350 MB;
# caswit-geo downloads nothing). It is left out by this rule alone; loading backbone weights from a
# local file is tested in tests/model/test_model.py.
NEEDS_A_DOWNLOAD = 'backbone_weights="swin_base_patch4_window12_384.pth"'


def python_statements(readme: Path = README) -> list[tuple[str, ast.Module]]:
    """Each top-level statement of the README's ```python blocks, in order: (its source, a module to run),
    the module's line numbers being the README's so that a traceback points at the README line."""
    text = readme.read_text(encoding="utf-8")
    statements = []
    for block in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        first_line = text.count("\n", 0, block.start(1)) + 1
        code = block.group(1)
        for node in ast.parse(code).body:
            source = ast.get_source_segment(code, node)
            module = ast.Module(body=[node], type_ignores=[])
            ast.increment_lineno(module, first_line - 1)
            statements.append((source, module))
    return statements


def test_the_readme_has_python_examples_and_one_statement_needs_a_download():
    sources = [source for source, _ in python_statements()]
    assert len(sources) > 20
    assert [s for s in sources if NEEDS_A_DOWNLOAD in s] == [
        'model = caswit_geo.build_model("caswit-base", num_classes=15,\n'
        '                               backbone_weights="swin_base_patch4_window12_384.pth")']


def test_readme_imports_and_package_names_exist():
    """Every import of the examples resolves, and every ``caswit_geo.<name>`` they use exists."""
    for source, module in python_statements():
        if isinstance(module.body[0], (ast.Import, ast.ImportFrom)):
            exec(compile(module, str(README), "exec"), {})
        for node in ast.walk(module):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "caswit_geo":
                assert hasattr(caswit_geo, node.attr), f"README.md: caswit_geo.{node.attr} does not exist ({source!r})"


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for source, module in python_statements():
        if NEEDS_A_DOWNLOAD not in source:
            exec(compile(module, str(README), "exec"), namespace)
    # what the examples say they do: a checkpoint saved and loaded back, a SimMIM run transferred
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "pretrained.safetensors").is_file()
    meta = namespace["meta"]
    assert len(meta.classes) == 6 and meta.input_spec.tile_size == 128 and meta.metadata["note"] == "anything JSON"
    assert namespace["loss"].item() > 0 and namespace["report"]
