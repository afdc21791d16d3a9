"""Issue #35, class 6: every key of edgepipe.toml is honoured by the real command, or refused.

`test_every_config_key_has_a_probe` walks `config.KEYS`: a key added without a probe here fails, so a
setting cannot again be read, validated and then silently not applied (as `tracking_uri` was).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgepipe.pipeline import config
from edgepipe.pipeline.tracking import URI_ENV
from edgepipe.testing import check_clean_outcome, run_cli, write_idx_dataset

pytest.importorskip("mlflow", reason="the tracking_uri probe tracks a run in MLflow: pip install -e .[mlflow]")


def project(root: Path, toml: str, mirror: bool = True, **top) -> Path:
    """root/edgepipe.toml, a keras:mnist mirror, and root/r.yaml (a data stage; a bench stage when the
    toml names a target); returns the recipe."""
    write_idx_dataset(root / "mirror" / "mnist", n_train=40, n_test=12)
    (root / "edgepipe.toml").write_text(toml)
    data = {"source": "keras:mnist", **({"mirror": [str(root / "mirror")]} if mirror else {})}
    stages = {"data": {"kind": "data", "params": data}}
    if "target" in toml:
        (root / "m.tflite").write_bytes(b"")
        stages["m"] = {"kind": "import", "inputs": {"data": "data"}, "params": {"path": str(root / "m.tflite")}}
        stages["bench"] = {"kind": "bench", "inputs": {"data": "data", "models": ["m"]}}
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", **top, "stages": stages}))
    return path


def deps(root: Path) -> list[str]:
    return sorted(json.loads((root / "runs/r/lock.json").read_text())["stages"]["data"]["parts"]["deps"])


def probe_data_mirror(root: Path) -> None:
    code, _, err = run_cli(["run", project(root, 'data_mirror = "mirror"\n', mirror=False)], root)
    assert code == 0, err
    assert deps(root) and all(f.startswith(str(root / "mirror")) for f in deps(root)), deps(root)


def probe_target(root: Path) -> None:
    code, _, err = run_cli(["run", project(root, 'target = "rpi4"\n')], root)
    line = check_clean_outcome(code, err, root)
    assert line and "target rpi4 is reached over SSH but no host was given" in line, line


def probe_hosts(root: Path) -> None:
    code, _, err = run_cli(["run", project(root, 'target = "rpi4"\nhosts = { rpi4 = "pi@127.0.0.1:1" }\n')], root)
    line = check_clean_outcome(code, err, root)  # port 1 refuses at once: the preflight names the device
    assert line and "pi@127.0.0.1:1" in line, line


def probe_tracking_uri(root: Path, folder: str = "store") -> None:
    recipe = project(root, f'tracking_uri = "{folder}"\n', tracking={"enabled": True})
    (root / "sub").mkdir(exist_ok=True)
    code, out, err = run_cli(["run", recipe, "--root", root], root / "sub")  # relative to the file, not the cwd
    assert code == 0, err
    assert (root / folder / "mlflow.db").is_file() and not (root / "mlruns").exists(), sorted(root.iterdir())
    assert f"tracked in MLflow at sqlite:///{root / folder / 'mlflow.db'}" in out, out


def probe_run_cache_size(root: Path) -> None:
    code, _, err = run_cli(["run", project(root, "run_cache_size = 0\n")], root)
    assert code == 0, err
    assert not (root / "runs/r/.cache").exists()  # 0: no run cache


PROBES = {
    "data_mirror": probe_data_mirror,
    "target": probe_target,
    "hosts": probe_hosts,
    "tracking_uri": probe_tracking_uri,
    "run_cache_size": probe_run_cache_size,
}


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    for name in (config.MIRROR_ENV, *URI_ENV):
        monkeypatch.delenv(name, raising=False)


def test_every_config_key_has_a_probe():
    assert set(PROBES) == set(config.KEYS), f"no probe for {set(config.KEYS) - set(PROBES)}: honour it, or refuse it"


@pytest.mark.parametrize("key", config.KEYS)
def test_every_config_key_is_honoured(key, tmp_path):
    PROBES[key](tmp_path)


FOLDER = st.text(alphabet="abcxyz019_-", min_size=1, max_size=8).filter(lambda s: s[0] not in "-")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(FOLDER, min_size=1, max_size=3))
def test_any_tracking_folder_in_the_config_is_where_the_run_is_tracked(parts):
    root = Path(tempfile.mkdtemp(prefix="edgepipe-cfg-"))
    try:
        probe_tracking_uri(root, "/".join(parts))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_environment_and_the_recipe_win_over_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPIPE_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    recipe = project(tmp_path, 'tracking_uri = "store"\n', tracking={"enabled": True})
    code, _, err = run_cli(["run", recipe], tmp_path)
    assert code == 0 and (tmp_path / "env.db").is_file() and not (tmp_path / "store").exists(), err
