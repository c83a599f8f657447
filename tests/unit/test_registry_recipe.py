import pytest
import yaml

from kdkit.errors import ConfigError
from kdkit.recipe import apply_overrides, load_recipe, recipe_from_dict
from kdkit.registry import Registry


def test_registry_unknown_name_lists_known_and_suggests():
    reg = Registry("widget")
    reg.add("alpha", object(), "first")
    reg.add("beta", object(), "second")
    with pytest.raises(ConfigError) as e:
        reg.get("alpah")
    msg = str(e.value)
    assert "unknown widget 'alpah'" in msg and "'alpha'" in msg and "Known: alpha, beta" in msg
    assert "\n" not in msg


def test_registry_duplicate_raises():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add("a", 2)


def test_registry_description_from_docstring():
    reg = Registry("fn")

    @reg.register()
    def thing():
        """Does the thing.

        More text."""

    assert reg.entries()[0].description == "Does the thing."


BASE = {"student": {"name": "mlp"}}


def test_unknown_key_names_path_and_allowed_fields():
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({**BASE, "optim": {"lrr": 0.1}})
    msg = str(e.value)
    assert "'optim.lrr'" in msg and "allowed:" in msg and "lr" in msg and "\n" not in msg


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"'optim.lr'.*'fast'"):
        recipe_from_dict({**BASE, "optim": {"lr": "fast"}})


def test_missing_student():
    with pytest.raises(ConfigError, match="'student': required field is missing"):
        recipe_from_dict({})


def test_literal_choices_are_listed():
    with pytest.raises(ConfigError, match="'schedule.name'.*cosine"):
        recipe_from_dict({**BASE, "schedule": {"name": "linear"}})


def test_overrides_nested_and_list_index():
    data = {**BASE, "terms": [{"name": "ce"}, {"name": "kd"}]}
    r = recipe_from_dict(data, ["optim.lr=0.1", "terms.1.params.temperature=8", "terms.0.weight=0.5",
                                "data.augment.flip=true", "teacher={name: cnn_teacher}"])
    assert r.optim.lr == 0.1 and r.terms[1].params == {"temperature": 8} and r.terms[0].weight == 0.5
    assert r.data.augment.flip is True and r.teachers[0].name == "cnn_teacher"


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["optim.lr"])


def test_duplicate_terms_need_keys():
    with pytest.raises(ConfigError, match="appear twice"):
        recipe_from_dict({**BASE, "terms": [{"name": "ce"}, {"name": "ce"}]})
    r = recipe_from_dict({**BASE, "terms": [{"name": "ce"}, {"name": "ce", "key": "ce_smooth"}]})
    assert [t.log_name for t in r.terms] == ["ce", "ce_smooth"]


def test_load_recipe_file_and_bad_yaml(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**BASE, "epochs": 3}))
    assert load_recipe(p).epochs == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {name: mlp\nepochs: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_bundled_recipes_validate():
    for name in ("mnist_teacher", "mnist_scratch", "mnist_kd"):
        r = load_recipe(name)
        assert r.student.name


def test_resolved_recipe_round_trips():
    r = recipe_from_dict({**BASE, "teachers": [{"name": "cnn_teacher", "checkpoint": "x.safetensors"}]})
    again = recipe_from_dict(yaml.safe_load(r.to_yaml()))
    assert again == r
