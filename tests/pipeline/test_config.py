"""Project config (edgepipe.toml, or [tool.edgepipe] in pyproject.toml): found, validated strictly, used by
every command; an environment variable wins over it."""

import json
import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepipe.core.errors import RecipeError
from edgepipe.pipeline import config
from edgepipe.pipeline.recipe import load_recipe
from edgepipe.testing import check_clean_outcome, run_cli, write_idx_dataset, write_recipe

RECIPE = {"stages": {"data": {"kind": "data", "params": {"source": "keras:mnist", "val_fraction": 0.2}}}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder whose keras:mnist is a tiny IDX set in a mirror folder; no mirror in the environment."""
    monkeypatch.delenv(config.MIRROR_ENV, raising=False)
    write_idx_dataset(tmp_path / "mirror" / "mnist")
    return tmp_path, write_recipe(tmp_path / "recipes" / "m.yaml", RECIPE)


def data_files(root):
    lock = json.loads((root / "runs/m/lock.json").read_text())
    return sorted(lock["stages"]["data"]["parts"]["deps"])


def test_the_data_mirror_comes_from_edgepipe_toml(project):
    root, recipe = project
    (root / "edgepipe.toml").write_text('data_mirror = "mirror"  # relative to this file\n')
    (root / "sub").mkdir()
    code, out, err = run_cli(["run", recipe, "--root", root], root / "sub")  # found from a subfolder too
    assert code == 0, err
    assert data_files(root) and all(f.startswith(str(root / "mirror" / "mnist")) for f in data_files(root))
    assert config.MIRROR_ENV not in os.environ  # scoped to the command


def test_an_environment_variable_wins_over_the_file(project, monkeypatch):
    root, recipe = project
    write_idx_dataset(root / "other" / "mnist", n_train=100)
    (root / "edgepipe.toml").write_text('data_mirror = ["mirror"]\n')
    monkeypatch.setenv(config.MIRROR_ENV, str(root / "other"))
    code, _, err = run_cli(["run", recipe], root)
    assert code == 0, err
    assert all(f.startswith(str(root / "other")) for f in data_files(root))


def test_tool_edgepipe_in_pyproject_and_the_run_cache_size(project):
    root, recipe = project
    (root / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.edgepipe]\ndata_mirror = "mirror"\nrun_cache_size = 0\n'
    )
    code, _, err = run_cli(["run", recipe], root)
    assert code == 0, err
    assert not (root / "runs/m/.cache").exists()  # 0: no run cache
    (root / "edgepipe.toml").write_text("")
    code, _, err = run_cli(["status", recipe], root)
    assert check_clean_outcome(code, err, root) == (
        f"edgepipe: error: {root / 'edgepipe.toml'} and [tool.edgepipe] in {root / 'pyproject.toml'} both configure "
        "this project; fix: keep one of them"
    )


def test_default_target_and_device_hosts(tmp_path):
    (tmp_path / "edgepipe.toml").write_text('target = "rpi4"\nhosts = { rpi4 = "pi@10.0.0.2:2222" }\n')
    cfg = config.load(tmp_path)
    assert cfg.target == "rpi4" and cfg.cache_bytes == 2 * 1024**3
    recipe = write_recipe(
        tmp_path / "b.yaml",
        {
            "stages": {
                "data": {"kind": "data", "params": {"source": "keras:mnist"}},
                "model": {"kind": "train", "inputs": {"data": "data"}},
                "tflite": {"kind": "convert", "inputs": {"data": "data", "model": "model"}},
                "bench": {"kind": "bench", "inputs": {"data": "data", "models": ["tflite"]}},
            }
        },
    )
    r = load_recipe(recipe, default_target=cfg.target, hosts=cfg.hosts)
    assert (r.stages["bench"].params.target, r.stages["bench"].params.host) == ("rpi4", "pi@10.0.0.2:2222")
    r = load_recipe(recipe, target="host", default_target=cfg.target, hosts=cfg.hosts)  # --target wins
    assert (r.stages["bench"].params.target, r.stages["bench"].params.host) == ("host", None)
    # a bench of the same device measured emulated reaches no host: the config's address is not given to it
    r = load_recipe(recipe, sets=("bench.measure=emulated",), default_target=cfg.target, hosts=cfg.hosts)
    assert (r.stages["bench"].params.target, r.stages["bench"].params.host) == ("rpi4", None)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'data_mirorr = "x"\n',
            "unknown key 'data_mirorr'; fix: use one of: data_mirror, target, hosts, tracking_uri, run_cache_size",
        ),
        ('run_cache_size = "lots"\n', "run_cache_size 'lots' is not a size"),
        ("run_cache_size = -1\n", "run_cache_size -1 is not a size"),
        ('target = "toaster"\n', "target: unknown target 'toaster'"),
        ('hosts = { rpi4 = "pi@@x" }\n', "hosts.rpi4: 'pi@@x' is not user@address[:port]"),
        ('hosts = { rpi6 = "pi@x" }\n', "hosts.rpi6: unknown target 'rpi6'"),
        ('hosts = { cortex-m4 = "pi@x" }\n', "hosts.cortex-m4: target cortex-m4 is not reached over SSH (reach: none)"),
        ('tracking_uri = "ht tp://x"\n', "tracking_uri 'ht tp://x' is neither a URI nor a folder"),
        ("tracking_uri = 5\n", "tracking_uri: expected a string, got 5"),
        ("data_mirror = [1]\n", "data_mirror"),
        ("data_mirror = \n", "malformed TOML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(tmp_path, text, message):
    (tmp_path / "edgepipe.toml").write_text(text)
    code, _, err = run_cli(["targets"], tmp_path)  # every command reads it, even one without a recipe
    line = check_clean_outcome(code, err, tmp_path)
    assert code == 2 and line.startswith(f"edgepipe: error: {tmp_path / 'edgepipe.toml'}: ") and message in line, line


# -- properties: generated tables must load or be refused in one line -------------------------------------------

SCALARS = st.one_of(
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["host", "rpi4", "0", "2 GB", "10kb", "pi@h", "x://y", "mlruns", "../shared/datasets", ""]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=5,
)
KEYS = st.one_of(
    st.sampled_from(config.KEYS),
    st.sampled_from(config.KEYS),
    st.text(min_size=1, max_size=12),
    st.sampled_from(["path", "Target", "data-mirror", "tracking"]),
)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not (isinstance(v, float) and math.isfinite(v) and v == int(v)) else f"{v:.1f}"
    if isinstance(v, str):
        return (
            '"'
            + "".join(
                c
                if c.isprintable() and c not in '"\\'
                else f"\\u{ord(c):04x}"
                if ord(c) < 0x10000
                else f"\\U{ord(c):08x}"
                for c in v
            )
            + '"'
        )
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


@settings(max_examples=40, deadline=None)
@given(table=st.dictionaries(KEYS, VALUES, max_size=4))
def test_generated_configs_load_or_fail_in_one_line(tmp_path_factory, table):
    root = tmp_path_factory.mktemp("cfg")
    (root / "edgepipe.toml").write_text("".join(f"{toml_value(k)} = {toml_value(v)}\n" for k, v in table.items()))
    code, _, err = run_cli(["targets"], root)
    line = check_clean_outcome(code, err, root)
    if any(k not in config.KEYS for k in table):
        assert code == 2 and "unknown key" in line and "use one of: data_mirror, target" in line, line
    if code == 0:
        cfg = config.load(root)
        assert set(table) <= set(config.KEYS) and cfg.cache_bytes >= 0


@settings(max_examples=25, deadline=None)
@given(text=st.text(max_size=40))
def test_any_text_as_edgepipe_toml_is_read_or_refused_in_one_line(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("cfg")
    (root / "edgepipe.toml").write_bytes(text.encode("utf-8", "surrogatepass"))
    code, _, err = run_cli(["targets"], root)
    check_clean_outcome(code, err, root)
    with pytest.raises(RecipeError) if code else _nothing():
        config.load(root)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
