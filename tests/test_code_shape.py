"""The package stays readable in one sitting per module: no source file over 400 lines, and no
function over 80 lines unless its docstring says why it is long ("Long because ...")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "src" / "edgespec"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
GENERATED = {"edgespec_pb2.py", "edgespec_pb2_grpc.py", "edgespec_pb2.pyi"}


def sources() -> list[Path]:
    return [path for path in sorted(PACKAGE_ROOT.rglob("*.py")) if path.name not in GENERATED]


def test_no_source_file_is_over_400_lines() -> None:
    long_files = {}
    for path in sources():
        lines = len(path.read_text().splitlines())
        if lines > MAX_FILE_LINES:
            long_files[str(path.relative_to(PACKAGE_ROOT))] = lines
    assert not long_files, f"over {MAX_FILE_LINES} lines: {long_files}"


def test_a_long_function_says_why_in_its_docstring() -> None:
    unexplained = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                unexplained.append(f"{path.relative_to(PACKAGE_ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not unexplained, "split these, or say why they are long ('Long because ...'):\n" + "\n".join(unexplained)
