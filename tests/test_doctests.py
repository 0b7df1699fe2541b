"""Every docstring example of the packages' public API runs as written (doctest).

The public API is each package's ``__all__`` (classes with their methods); an example that rots
fails here, so ``uv run pytest`` and CI run them all.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest

PUBLIC_MODULES = (
    "fq_quant",
    "fq_importance",
    "fq_alloc",
    "fq_baq",
    "fq_fairmetrics",
    "fq_fairmetrics.torch",
)


def _examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    found: dict[tuple[str | None, int | None, str], doctest.DocTest] = {}
    for name in module.__all__:
        obj = getattr(module, name)
        if not (callable(obj) or isinstance(obj, type)):
            continue  # constants carry their type's docstring, not ours
        home = importlib.import_module(getattr(obj, "__module__", module_name) or module_name)
        for test in finder.find(obj, f"{module_name}.{name}", module=home, globs={}):
            if test.examples:
                found.setdefault((test.filename, test.lineno, test.name), test)
    return list(found.values())


def test_the_public_api_has_examples() -> None:
    assert sum(len(_examples(m)) for m in PUBLIC_MODULES) >= 5


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in _examples(module_name):
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, report.getvalue()
