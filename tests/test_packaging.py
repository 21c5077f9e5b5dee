"""The installed package: namespace, console script, cheap imports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PACKAGES = ("interp", "sae", "circuits", "kernels", "apps")


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})


@pytest.mark.parametrize("name", PACKAGES)
def test_only_namespaced_imports(name, tmp_path):
    # from a neutral folder, so the repository root is not on sys.path
    bare = _run(f"import {name}", tmp_path)
    assert bare.returncode != 0 and "ModuleNotFoundError" in bare.stderr, f"bare {name!r} importable"
    ok = _run(f"import mechscope.{name} as m; print(m.__name__)", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"mechscope.{name}"


def test_import_is_cheap(tmp_path):
    code = ("import sys, mechscope.kernels, mechscope.interp, mechscope.sae, mechscope.apps.cli; "
            "print(sorted(m for m in ('triton', 'transformer_lens', 'sae_lens', 'plotly', 'datasets') if m in sys.modules))")
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_help_lists_subcommands_with_docs():
    from mechscope.apps.cli import COMMANDS, build_parser

    parser = build_parser()
    text = parser.format_help()
    for name in COMMANDS:
        assert name in text
    for name in COMMANDS:
        sub = parser._subparsers._group_actions[0].choices[name]
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"option {action.dest} of {name} has no help"


def test_console_script_runs(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "mechscope")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "zoo" in out.stdout
    out = subprocess.run([exe, "zoo", "show"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "needs a model name" in out.stderr
