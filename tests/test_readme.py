"""The README's two commands are the ones CI runs."""

import re

from tests.conftest import ROOT


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_two_commands():
    install_and_run, install_and_test = readme_commands()
    assert install_and_run.startswith("python3.11 -m venv .venv") and "costmodel " in install_and_run
    assert install_and_test.startswith("python3.11 -m venv .venv") and "pytest" in install_and_test


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
