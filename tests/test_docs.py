"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_run_and_test_commands_and_ci_runs_the_test_command():
    run, test = readme_commands()[:2]
    assert run.endswith("python -m fedquant") and "pip install torch==2.13.0 &&" in run
    assert test.endswith("python -m pytest") and 'pip install -e ".[test,export]"' in test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci_lines


def test_readme_gives_a_command_for_every_shipped_experiment():
    """Every conf/experiment file is run by a command line in the README's code blocks, and every
    experiment the README names (prose included) exists."""
    text = (ROOT / "README.md").read_text()
    commands = "\n".join(readme_commands())
    in_commands = {n for values in re.findall(r"\+experiment=([\w,]+)", commands) for n in values.split(",")}
    shipped = {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    assert shipped - in_commands == set()
    named = set(re.findall(r"\b((?:fmnist|cifar|cifar100)_\w+)", text)) - {"cifar_10", "cifar_100"}
    assert {n for n in named if not (ROOT / "conf" / "experiment" / f"{n}.yaml").exists()} == set()
