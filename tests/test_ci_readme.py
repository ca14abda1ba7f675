"""CI (``.ci/run``) runs exactly the README's set-up and test commands, in that order."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Set-up"):]
    section = section[:section.index("\n## ", 1)]
    setup, test = re.findall(r"```bash\n(.*?)```", section, re.S)[:2]
    commands = [setup.strip(), test.strip()]
    assert all("\n" not in c for c in commands), commands  # one command each
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    steps = [line for line in ci if line.strip() and not line.startswith("#")
             and not line.startswith(("set ", "cd "))]
    assert steps == commands
