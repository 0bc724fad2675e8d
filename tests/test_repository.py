import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_exactly_the_readmes_test_command():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_main_job_module_exists():
    main_job = readme_commands()[0]
    module = re.search(r"python -m (\S+)", main_job).group(1)
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
