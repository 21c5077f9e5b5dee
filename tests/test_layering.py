"""The layering of DESIGN.md, read from the source: imports point one way.

``interp <- sae <- circuits <- apps``; ``kernels`` depends on torch (and triton) only; nothing
imports ``apps``; only the model adapter (interp/models.py and the zoo) imports TransformerLens and
only sae/io.py (and the dictionary adapters) import sae-lens / sparsify — besides the benchmarks in
apps/bench/, which run those libraries as the baselines they measure. Every ``import`` statement counts, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mechscope", "kernels", "interp", "sae", "circuits", "apps")
# what each package may import from mechscope ("mechscope" = the shared root helpers)
ALLOWED = {
    "mechscope": {"mechscope"},
    "kernels": {"kernels"},
    "interp": {"mechscope", "kernels", "interp"},
    "sae": {"mechscope", "kernels", "interp", "sae"},
    "circuits": {"mechscope", "kernels", "interp", "sae", "circuits"},
    "apps": {"mechscope", "kernels", "interp", "sae", "circuits", "apps"},
}
# third-party libraries only certain files may import (path prefixes, relative to the root)
GUARDED = {
    "transformer_lens": ("interp/models.py", "interp/zoo/", "apps/bench/"),
    "sae_lens": ("sae/io.py", "sae/adapters", "apps/bench/"),
    "sparsify": ("sae/io.py", "sae/adapters", "apps/bench/"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
    return out


def _target(module: str) -> str | None:
    """``mechscope.sae.io`` -> ``sae``; ``mechscope`` / ``mechscope.files`` -> ``mechscope``."""
    parts = module.split(".")
    if parts[0] != "mechscope":
        return None
    if len(parts) > 1 and parts[1] in PACKAGES:
        return parts[1]
    return "mechscope"


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    bad = []
    for path in _files(package):
        for line, module in _imports(path):
            target = _target(module)
            if target is not None and target not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, f"{package} may import only {sorted(ALLOWED[package])}:\n" + "\n".join(bad)


def test_peer_libraries_stay_behind_their_adapters():
    bad = []
    for package in PACKAGES:
        for path in _files(package):
            rel = path.relative_to(ROOT).as_posix()
            for line, module in _imports(path):
                allowed = GUARDED.get(module.split(".")[0])
                if allowed is not None and not rel.startswith(allowed):
                    bad.append(f"{rel}:{line} imports {module} (allowed in {', '.join(allowed)})")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from mechscope.apps.cli import main\n    import transformer_lens.utils\n")
    assert _imports(src) == [(2, "mechscope.apps.cli"), (3, "transformer_lens.utils")]
    assert _target("mechscope.apps.cli") == "apps" and _target("mechscope.files") == "mechscope"
