"""No floating point on the path that decides a coded bit, checked on the source itself.

The coded bits of a payload come from: the container (msgpack of integers and bytes),
the text coder (exact rational arithmetic), the sketch's lossy stage, chain walk,
context model, body framing and the integer range coder. This test walks the syntax
tree of every function on that path and fails on a float literal, a true division,
a ``float()`` call, ``math`` or a numpy float type: arithmetic that could round
differently on another machine or library version. The HED network is upstream of
this path (its map is rounded to uint8 before the lossy stage); ``render`` decides
the decoded line map with OpenCV's integer line drawing.
"""

from __future__ import annotations

import ast
import inspect

import pytest

from services.bitstream import container, range_coder, text_coder
from services.sketch import body, chain_coder, coder, contexts, lossy, render

WHOLE_MODULES = [range_coder, container, chain_coder, contexts, body]
FUNCTIONS = [
    text_coder.encode_token_ids, text_coder.decode_token_ids, text_coder.load_prior, text_coder._symbols,
    text_coder._Table.from_freqs, text_coder._Table.find, text_coder.TextPrior.id_table,
    coder.encode_sketch, coder._fit_budget, coder._prune_to_budget, coder.decode_sketch,
    lossy.binarise, lossy.block_or, lossy.thin, lossy.drop_corners, lossy.lossy_bitmap, lossy.low_res_size,
    render.render,
]
REPORTING_ONLY = {"bpp"}  # Payload.bpp: bits per pixel for people, never fed back into coding
FLOAT_NAMES = {"float", "float16", "float32", "float64", "float_", "double", "half", "math", "fractions", "decimal"}


def float_uses(source: str) -> list[str]:
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name in REPORTING_ONLY:
            node.body, node.returns = [], None  # not on the coding path
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            found.append(f"float literal {node.value!r} (line {node.lineno})")
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and isinstance(node.op, ast.Div):
            found.append(f"true division (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id in FLOAT_NAMES:
            found.append(f"{node.id} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and node.attr in FLOAT_NAMES:
            found.append(f".{node.attr} (line {node.lineno})")
    return found


@pytest.mark.parametrize("module", WHOLE_MODULES, ids=lambda m: m.__name__)
def test_no_float_in_wire_format_modules(module):
    assert float_uses(inspect.getsource(module)) == []


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__qualname__)
def test_no_float_in_coding_functions(function):
    assert float_uses(inspect.cleandoc("\n" + inspect.getsource(function))) == []


def test_the_check_catches_floats():
    assert float_uses("def f(a, b):\n    return a / b") == ["true division (line 2)"]
    assert float_uses("x = 0.5") and float_uses("y = float(3)") and float_uses("z = np.float64(1)")
    assert float_uses("a = b // c + (d << 2)") == []
