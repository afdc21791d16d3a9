"""Recipe validation: every bad input is one RecipeError naming the file and the key."""

import pytest

from edgepipe.core.errors import RecipeError
from edgepipe.pipeline.recipe import find_recipe, load_recipe
from edgepipe.testing import tiny_recipe, write_recipe


def load(tmp_path, recipe, **kw):
    return load_recipe(write_recipe(tmp_path / "r.yaml", recipe), **kw)


def error(tmp_path, recipe, **kw) -> str:
    with pytest.raises(RecipeError) as e:
        load(tmp_path, recipe, **kw)
    msg = str(e.value)
    assert "\n" not in msg and "r.yaml" in msg or "--set" in msg
    return msg


def test_valid_recipe_loads_in_topological_order(tmp_path):
    r = tiny_recipe(tmp_path / "d")
    r["stages"] = {"model": r["stages"]["model"], "data": r["stages"]["data"]}  # declared out of order
    recipe = load(tmp_path, r)
    assert list(recipe.stages) == ["data", "model"]
    assert recipe.stages["model"].params.epochs == 2
    assert recipe.stages["model"].params.schedule.kind == "constant"
    assert recipe.stages["model"].params.early_stopping.enabled is False
    assert recipe.ancestors("model") == ["data", "model"]


def test_malformed_yaml_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("stages:\n  data:\n    kind: data\n   params: [\n")
    with pytest.raises(RecipeError, match=r"r.yaml: malformed YAML at line \d+, column \d+"):
        load_recipe(p)


def test_unknown_stage_kind(tmp_path):
    r = tiny_recipe(tmp_path)
    r["stages"]["model"]["kind"] = "trian"
    assert "stages.model.kind: unknown stage kind 'trian'" in error(tmp_path, r)


def test_unknown_param_lists_valid_ones(tmp_path):
    r = tiny_recipe(tmp_path)
    r["stages"]["model"]["params"]["epochz"] = 3
    msg = error(tmp_path, r)
    assert "stages.model.params: unknown key 'epochz'" in msg and "epochs" in msg


def test_unknown_nested_param(tmp_path):
    r = tiny_recipe(tmp_path)
    r["stages"]["model"]["params"]["schedule"]["kinds"] = "step"
    assert "stages.model.params.schedule: unknown key 'kinds'" in error(tmp_path, r)


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("epochs", "ten", "expected an integer, got 'ten'"),
        ("epochs", 0, "0 is out of range"),
        ("lr", True, "expected a number, got True"),
        ("optimizer", "adamm", "'adamm' is not a valid choice; fix: use one of: sgd, momentum"),
        ("label_smoothing", 0.9, "out of range"),
        ("arch_args", [1], "expected a mapping"),
    ],
)
def test_wrong_types_and_ranges(tmp_path, key, value, expect):
    r = tiny_recipe(tmp_path)
    r["stages"]["model"]["params"][key] = value
    msg = error(tmp_path, r)
    assert f"stages.model.params.{key}" in msg and expect in msg


def test_bad_source_is_caught_at_load(tmp_path):
    r = tiny_recipe(tmp_path)
    r["stages"]["data"]["params"]["source"] = "keras:imagenet"
    assert "unknown keras dataset" in error(tmp_path, r)


def test_unknown_top_level_and_stage_keys(tmp_path):
    r = tiny_recipe(tmp_path)
    r["stagez"] = {}
    assert "unknown key 'stagez'" in error(tmp_path, r)
    r = tiny_recipe(tmp_path)
    r["stages"]["data"]["parms"] = {}
    assert "stages.data: unknown key 'parms'" in error(tmp_path, r)


def test_missing_and_unknown_inputs(tmp_path):
    r = tiny_recipe(tmp_path)
    del r["stages"]["model"]["inputs"]
    assert "stages.model.inputs: missing input 'data'" in error(tmp_path, r)
    r = tiny_recipe(tmp_path)
    r["stages"]["model"]["inputs"] = {"data": "dta"}
    assert "no stage named 'dta'" in error(tmp_path, r)
    r = tiny_recipe(tmp_path)
    r["stages"]["model"]["inputs"]["teacher"] = "data"
    assert "unknown role 'teacher'" in error(tmp_path, r)


def test_cycle_is_named(tmp_path):
    r = tiny_recipe(tmp_path)
    r["stages"]["second"] = {"kind": "qat", "inputs": {"data": "data", "model": "third"}}
    r["stages"]["third"] = {"kind": "qat", "inputs": {"data": "data", "model": "second"}}
    assert "input cycle second -> third -> second" in error(tmp_path, r)


def test_vars_substitute_with_type(tmp_path):
    r = tiny_recipe(tmp_path / "d")
    r["vars"] = {"n": 7, "dir": str(tmp_path / "d")}
    r["stages"]["model"]["params"]["epochs"] = "${n}"
    r["stages"]["data"]["params"]["source"] = "idx:${dir}"
    recipe = load(tmp_path, r)
    assert recipe.stages["model"].params.epochs == 7
    assert recipe.stages["data"].params.source == f"idx:{tmp_path / 'd'}"
    r["stages"]["model"]["params"]["epochs"] = "${m}"
    assert "unknown variable ${m}" in error(tmp_path, r)


def test_profiles_and_sets_override_then_validate(tmp_path):
    r = tiny_recipe(tmp_path)
    r["profiles"] = {"smoke": {"model.epochs": 1, "model.schedule.kind": "cosine"}}
    recipe = load(tmp_path, r, profile="smoke", sets=("model.lr=0.5", "data.val_fraction=0.25"))
    p = recipe.stages["model"].params
    assert (p.epochs, p.schedule.kind, p.lr) == (1, "cosine", 0.5)
    assert recipe.stages["data"].params.val_fraction == 0.25
    assert "unknown profile 'fast'; fix: use one of: smoke" in error(tmp_path, r, profile="fast")
    with pytest.raises(RecipeError, match="--set model.epohcs|unknown key 'epohcs'"):
        load(tmp_path, r, sets=("model.epohcs=3",))
    with pytest.raises(RecipeError, match="--set model.epochs: expected stage.key=value"):
        load(tmp_path, r, sets=("model.epochs",))
    with pytest.raises(RecipeError, match="no stage named 'modle'"):
        load(tmp_path, r, sets=("modle.epochs=3",))


def test_shipped_recipes_validate():
    for name in ("smoke", "mnist_baseline", "mnist_student"):
        recipe = load_recipe(find_recipe(name))
        assert recipe.stages
    for name in ("mnist_baseline", "mnist_student", "fashion_transfer"):
        smoke = load_recipe(find_recipe(name), profile="smoke")
        for stage in (s for s in smoke.stages.values() if s.kind.name == "data"):  # a quick look reads little
            assert None not in (stage.params.limit_train, stage.params.limit_test), (name, stage.name)
    student = load_recipe(find_recipe("mnist_student"))
    # ${student} reaches both students, so the report compares the same network with and without a teacher
    assert student.stages["student"].params.arch_args == {"widths": [16, 32, 40], "blocks": 0}
    assert student.stages["student_scratch"].params.arch_args == student.stages["student"].params.arch_args
    assert student.stages["student"].params.epochs == student.stages["student_scratch"].params.epochs == 30
    quick = load_recipe(find_recipe("mnist_student"), profile="quick")
    assert quick.stages["student"].params.epochs == quick.stages["student_scratch"].params.epochs == 15
    # the deployable int8 model is gated against the float model it was quantized from
    assert student.stages["student_qat"].inputs["model"] == "student_scratch"
    gate = student.stages["report"].params.gates[0]
    assert (gate.model, gate.against, gate.max_drop) == ("student_qat/int8", "student_scratch/float32", 0.3)
    assert set(student.stages["bench"].inputs["models"]) == {
        "teacher_tflite",
        "student_tflite",
        "scratch_tflite",
        "qat_tflite",
        "ref_tflite",
    }
    with pytest.raises(RecipeError, match="recipe 'nope' not found"):
        find_recipe("nope")
