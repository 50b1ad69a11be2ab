"""The defaults the docs show are the ones the commands use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from apparate_trt.cli import compile as compile_cli
from apparate_trt.cli import run as run_cli

ROOT = Path(__file__).resolve().parents[1]
USAGE_FLAG = re.compile(r"\[--([a-z-]+) ([0-9]+(?:\.[0-9]+)?)\]")


def _defaults(parser) -> dict[str, object]:
    return {opt: action.default for action in parser._actions for opt in action.option_strings}


@pytest.mark.parametrize("doc", ["README.md", "docs/USAGE.md", "docs/SERVING.md"])
def test_every_default_in_a_usage_line_is_the_commands_default(doc: str):
    defaults = {**_defaults(compile_cli.build_parser()), **_defaults(run_cli.build_parser())}
    text = (ROOT / doc).read_text()
    shown = USAGE_FLAG.findall(text)
    assert shown, f"{doc} shows no [--flag default] usage"
    for flag, value in shown:
        option = f"--{flag}"
        if option == "--max-batch" and value == "16":  # apparate-compile's own --max-batch
            assert compile_cli.build_parser().get_default("max_batch") == 16
            continue
        assert option in defaults, f"{doc} shows {option}, which no command has"
        assert float(value) == float(defaults[option]), (
            f"{doc} shows {option} {value}, the command's default is {defaults[option]}"
        )


def test_the_readme_results_table_is_what_readme_table_prints(capsys):
    """The README's results rows are the output of the command it names, on the committed summary."""
    import importlib.util

    readme = (ROOT / "README.md").read_text()
    command = re.search(r"`python benchmarks/readme_table\.py --systems ([a-z,-]+)`", readme)
    assert command, "the README names the command that prints its results table"
    spec = importlib.util.spec_from_file_location("readme_table", ROOT / "benchmarks" / "readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--systems", command.group(1), str(ROOT / "benchmarks" / "results" / "summary.json")])
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    shown = [line for line in readme.splitlines() if line.startswith("| ") and "|" in line[2:]]
    for row in printed:
        assert row in shown, f"README.md lacks the row {row!r}: rerun the command and paste its table"
