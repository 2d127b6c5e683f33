"""The shape the folder listing promises (issue 25): three sibling stages on shared parts, no import circle, and no
code outside edgetl/formats/ that branches on a format's name. import-linter checks the layers in `make lint`;
these check what its contracts can't say."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

import edgetl

PACKAGE = Path(edgetl.__file__).parent
FORMAT_NAMES = {"onnx", "torchscript", "executorch", "litert"}


def test_the_import_graph_has_no_circle_at_any_depth_type_checking_imports_included():
    graph = grimp.build_graph("edgetl", exclude_type_checking_imports=False)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                return [*path[path.index(imported):], imported]
            if imported not in state and (found := visit(imported)):
                return found
        state[module] = 2
        path.pop()
        return None

    for module in sorted(graph.modules):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_edgetl_train_is_a_function_and_no_package_is_called_train():
    import inspect

    assert inspect.isfunction(edgetl.train)
    assert not (PACKAGE / "train").exists() and not (PACKAGE / "train.py").exists()


def _compared_strings(node: ast.Compare) -> set[str]:
    found = set()
    for side in (node.left, *node.comparators):
        elements = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
        found |= {e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    return found


def test_outside_formats_no_code_compares_a_value_with_a_format_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "formats":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Compare) and _compared_strings(node) & FORMAT_NAMES:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == [], "a format answers for itself (edgetl.formats.base.Format): " + ", ".join(offenders)


def test_training_and_verify_take_the_same_files_from_a_folder(tmp_path, caplog):
    """One walker: what `--data DIR` gives verify is what training would list from the same class folders."""
    import numpy as np
    from PIL import Image

    from edgetl.data.folders import list_classes
    from edgetl.data.inputs import gather_inputs
    from edgetl.preprocessing import Preprocessing

    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for name in ("1.png", "2.JPG", "3.jfif", "4.webp", ".hidden.png"):
            pixels.save(tmp_path / c / name, format="PNG" if name.endswith("png") else "JPEG"
                        if name.lower().endswith(("jpg", "jfif")) else "WEBP")
        (tmp_path / c / "notes.txt").write_text("not an image")
    (tmp_path / "__MACOSX").mkdir()
    pixels.save(tmp_path / "__MACOSX" / "x.png")
    listed, _ = list_classes(tmp_path, root=tmp_path)
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, resize_size=16, crop_size=16, interpolation="bilinear")
    inputs = gather_inputs(tmp_path, labels=["a", "b"], preprocessing=prep, data=str(tmp_path), samples=100, random=0)
    assert sorted(listed["a"]) == ["1.png", "2.JPG", "3.jfif", "4.webp"]
    assert inputs.info["images"] == sum(len(v) for v in listed.values()) == 8
