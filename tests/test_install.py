"""The project installs as a package: a wheel carries both packages and both console scripts, and the installed
`randmask` command answers like `python -m randmask`."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_holds_both_packages_and_console_scripts(tmp_path):
    source = tmp_path / "src"  # a copy, so that the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("randmask", "study"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("randmask-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "randmask/cli/main.py" in names and "randmask/attacks/pgd.py" in names and "study/cli.py" in names
    assert "randmask/core/fused_bn.cpp" in names  # the fused kernels' source, compiled at first use
    assert not any(n.startswith(("tests/", "pages/", "bench/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "randmask = randmask.cli.main:main" in text and "randmask-study = study.cli:main" in text


def test_console_script_matches_python_dash_m(tmp_path):
    script = shutil.which("randmask")
    if script is None:
        pytest.skip("the project is not installed (pip install -e .)")
    # from a folder outside the checkout: the installed package, no path tricks
    installed = subprocess.run([script, "info", "0.7-Shallow"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120, check=True).stdout
    module = subprocess.run([sys.executable, "-m", "randmask", "info", "0.7-Shallow"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(installed) == json.loads(module)
    assert json.loads(installed)["notation"] == "0.7-Shallow"


def test_import_contracts_hold():
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("import-linter is not installed")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert "0 broken" in result.stdout


def test_every_module_has_a_layer():
    """A new module cannot slip past the layer contract: each module of randmask is named in it, itself or by the
    folder (layer) it sits in; a new top-level module or a new folder the contract does not name fails here."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layered = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
                   and "containers" not in c)
    named = {m.strip() for layer in layered["layers"] for m in layer.replace(":", "|").split("|")}
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
               for p in (ROOT / "randmask").rglob("*.py")} - {"randmask"}
    unlayered = sorted(m for m in modules if not any(m == n or m.startswith(n + ".") for n in named))
    assert unlayered == []
    assert "randmask.views.catalog" in modules and {"randmask.views", "randmask.attacks"} <= named


def test_nothing_patches_sys_path():
    """The project is installed (pip install -e .); no module or script reaches around that."""
    offenders = [str(path.relative_to(ROOT)) for folder in ("randmask", "study", "pages", "bench", "participant_app")
                 for path in (ROOT / folder).rglob("*.py") if "sys.path.insert" in path.read_text()]
    offenders += [name for name in ("app.py",) if "sys.path.insert" in (ROOT / name).read_text()]
    assert offenders == []


@pytest.mark.parametrize("script, module", [("randmask", "randmask"), ("randmask-study", "study")])
def test_usage_lines_name_the_command_the_user_typed(tmp_path, script, module):
    path = shutil.which(script)
    if path is None:
        pytest.skip("the project is not installed (pip install -e .)")
    installed = subprocess.run([path, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120).stdout
    dash_m = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120).stdout
    assert installed.startswith(f"usage: {script} ") and dash_m.startswith(f"usage: python -m {module} ")


def test_the_readme_app_command_serves_this_machine_only():
    """`streamlit run app.py` from the checkout (the README's first command) listens on loopback, so it opens the
    lab's pages at once; exposing it takes an explicit --server.address, and then app.py asks for the password."""
    from study.auth import is_loopback

    address = subprocess.run([sys.executable, "-c", "from streamlit import config; "
                              "print(config.get_option('server.address'))"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120).stdout.strip()  # as `run` reads it
    assert is_loopback(address), address
