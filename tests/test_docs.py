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


def test_readme_documents_every_shipped_experiment():
    text = (ROOT / "README.md").read_text()
    named = {name for values in re.findall(r"\+experiment=([\w,]+)", text) for name in values.split(",")}
    for exp in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        if exp.stem.startswith(("cifar_qafedavg", "fmnist_")):
            assert exp.stem in named
