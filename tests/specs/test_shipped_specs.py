"""The ready specs ship inside the package: found by name, copied by ``forgetlab init``, and in
the built wheel; a wheel install outside a checkout records its version and a hash of its files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgetlab.cli.main import app
from forgetlab.config import ConfigError, load_toml
from forgetlab.specs import copy_spec, resolve_spec, shipped_names, specs_dir
from forgetlab.train.env import files_sha256, package_trace

REPO = Path(__file__).resolve().parents[2]
READY = {"cl_mechanisms", "memory_ffn", "methods", "qk_freeze", "quickstart", "strengths"}


def test_every_ready_spec_is_found_by_name_with_or_without_suffix():
    assert set(shipped_names()) == READY
    for name in READY:
        assert resolve_spec(name) == resolve_spec(f"{name}.toml") == specs_dir() / f"{name}.toml"
        assert load_toml(resolve_spec(name))


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("quickstart.toml").write_text('name = "mine"\n')
    assert resolve_spec("quickstart.toml") == Path("quickstart.toml")
    assert resolve_spec("quickstart") == specs_dir() / "quickstart.toml"


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"'nosuch' is neither .* shipped: \['cl_mechanisms'"):
        resolve_spec("nosuch")
    with pytest.raises(ConfigError, match="found by name: 'qk_freeze'"):
        resolve_spec("experiments/qk_freeze.toml")


def test_plan_and_run_take_a_shipped_name():
    runner = CliRunner()
    res = runner.invoke(app, ["plan", "qk_freeze", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == "qk_freeze"
    bad = runner.invoke(app, ["run", "nosuch"])
    assert bad.exit_code == 2 and "shipped: ['cl_mechanisms'" in bad.output


def test_init_writes_an_editable_copy_renamed_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["init", "studies/mine", "--from", "cl_mechanisms"])
    assert res.exit_code == 0, res.output
    copy = load_toml("studies/mine.toml")
    original = load_toml(resolve_spec("cl_mechanisms"))
    assert copy["name"] == "mine" and {**copy, "name": original["name"]} == original
    Path("studies/mine.toml").write_text("# my edits\n")
    again = runner.invoke(app, ["init", "studies/mine", "--from", "qk_freeze"])
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert Path("studies/mine.toml").read_text() == "# my edits\n"
    assert runner.invoke(app, ["init", "qk_freeze"]).exit_code == 0  # NAME shipped: its copy
    assert load_toml("qk_freeze.toml") == load_toml(resolve_spec("qk_freeze"))


def test_init_renames_only_the_top_level_name(tmp_path):
    src = tmp_path / "src.toml"
    src.write_text('seed = 1\n\n[[mechanisms]]\nname = "replay"\n')
    out = copy_spec(tmp_path / "new", src)
    data = load_toml(out)
    assert data["name"] == "new" and data["mechanisms"] == [{"name": "replay"}]


def test_the_files_hash_changes_with_any_package_file(tmp_path):
    pkg = shutil.copytree(specs_dir(), tmp_path / "pkg", ignore=shutil.ignore_patterns("__pycache__"))
    before = files_sha256(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"cache")
    assert files_sha256(pkg) == before  # bytecode is not the package
    (pkg / "quickstart.toml").write_text((pkg / "quickstart.toml").read_text() + "# edit\n")
    assert files_sha256(pkg) != before


def test_the_built_wheel_ships_the_specs_and_its_install_traces_itself(tmp_path):
    """Build the wheel offline from a copy of the tree, install it outside any checkout, then:
    names resolve from the installed copy, run.json's env names the distribution's version and
    files hash (git is null there), and an installed file edited afterwards is reported."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w"),
                    str(tree)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "w").glob("forgetlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"forgetlab/specs/{n}.toml" for n in READY} <= names
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)  # fmt: skip
    probe = (
        "import json, torch; from forgetlab.specs import resolve_spec;"
        "from forgetlab.train.env import environment;"
        "env = environment(torch.device('cpu'));"
        "print(json.dumps({'spec': str(resolve_spec('cl_mechanisms')),"
        " 'git': env['git'], 'package': env['package']}))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    seen = json.loads(out.stdout)
    installed = (target / "forgetlab").resolve()
    assert seen["spec"] == str(installed / "specs" / "cl_mechanisms.toml")
    assert seen["git"]["commit"] is None
    pkg = seen["package"]
    assert pkg["location"] == str(installed) and pkg["files_sha256"] == files_sha256(installed)
    assert pkg["distribution"]["version"] == pkg["version"]
    assert pkg["distribution"]["record_mismatches"] == []

    spec = installed / "specs" / "quickstart.toml"
    spec.write_text(spec.read_text() + "# edited after install\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    edited = json.loads(out.stdout)["package"]
    assert edited["distribution"]["record_mismatches"] == ["specs/quickstart.toml"]
    assert edited["files_sha256"] != pkg["files_sha256"]


def test_package_trace_of_this_checkout_hashes_the_loaded_package():
    import forgetlab

    trace = package_trace()
    assert trace["version"] == forgetlab.__version__
    assert trace["files_sha256"] == files_sha256(Path(forgetlab.__file__).parent.resolve())
