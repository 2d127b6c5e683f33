import pytest

from edgetl.errors import RecipeError
from edgetl.recipe import known_recipes, load_recipe, parse_recipe

BASE = {"backbone": "resnet18", "phases": [{"name": "head", "epochs": 2}]}


def with_phase(**kw):
    return {**BASE, "phases": [{"name": "head", "epochs": 2, **kw}]}


@pytest.mark.parametrize("name", list(known_recipes()))
def test_shipped_recipes_validate(name):
    recipe = load_recipe(name)
    # Every shipped recipe starts with the head on cached views; the later phases join on the cached prefix.
    assert recipe.phases[0].train == "head" and all(p.cached for p in recipe.phases)


def test_overrides_and_epochs_scale():
    recipe = load_recipe("quickstart", overrides={"seed": 7, "weights": None}, epochs_scale=0.5)
    assert recipe.seed == 7 and recipe.weights == "imagenet"
    assert [p.epochs for p in recipe.phases] == [8, 3]  # 15 and 6 halved, rounded half to even


def test_round_trip_through_toml(tmp_path):
    recipe = load_recipe("quickstart")
    path = tmp_path / "r.toml"
    path.write_text(recipe.to_toml())
    assert load_recipe(str(path)) == recipe
    assert load_recipe(str(path)).digest() == recipe.digest()


@pytest.mark.parametrize("data, message", [
    ({**BASE, "colour": 1}, "colour: unknown key"),
    (with_phase(epochs=-1), "phases.0.epochs: Input should be greater than 0"),
    (with_phase(lr=0), "phases.0.lr: Input should be greater than 0"),
    (with_phase(lr=float("nan")), "phases.0.lr"),
    (with_phase(train="last:0"), "phases.0.train: must be 'head', 'all' or 'last:N'"),
    (with_phase(bn="sometimes"), "phases.0.bn"),
    (with_phase(epochs="three"), "phases.0.epochs"),
    (with_phase(warmup_epochs=5), "warmup_epochs (5.0) must be shorter"),
    (with_phase(train="all", views=2), "views caches the frozen part's outputs"),
    (with_phase(views=2, augment=False), "views are augmented views"),
    (with_phase(views=-1), "phases.0.views"),
    ({**BASE, "backbone": "resnet19"}, "did you mean 'resnet18'"),
    ({**BASE, "phases": []}, "phases: List should have at least 1 item"),
    ({**BASE, "backbone": "timm:convnext_atom"}, "did you mean 'timm:convnext_atto'"),
    ({**BASE, "head": {"hidden": [0]}}, "head.hidden: hidden widths must be whole numbers"),
    ({**BASE, "head": {"dropout": 1.0}}, "head.dropout: Input should be less than 1"),
    ({**BASE, "head": {"width": 3}}, "head.width: unknown key"),
])
def test_bad_recipes_give_one_line_per_field(data, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(data, source="r.toml")
    assert message in str(err.value)
    assert all(line.startswith("r.toml: ") for line in str(err.value).splitlines())


@pytest.mark.parametrize("value, message", [(0, "Input should be greater than 0"), ("fast", "head_lr")])
def test_lr_with_a_bad_first_head_rate_names_the_field(value, message):
    """--lr scales every rate by lr / the first head rate: a zero or non-number rate is the recipe's field error."""
    with pytest.raises(RecipeError) as err:
        load_recipe("quickstart", settings=[f"phases.0.head_lr={value}"], lr=1e-3)
    assert "phases.0.head_lr" in str(err.value) and message in str(err.value)


def test_unknown_recipe_name_suggests():
    with pytest.raises(RecipeError, match="did you mean 'quickstart'"):
        load_recipe("quickstrat")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("backbone = ")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(str(bad))
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(str(tmp_path / "missing.toml"))


def test_a_recipe_without_a_head_section_keeps_its_digest():
    """Runs written before [head] existed keep their recipe hash (and so their resume)."""
    plain = parse_recipe(BASE)
    assert plain.head is None and "head" not in plain.model_dump(exclude_none=True)
    with_head = parse_recipe({**BASE, "head": {"hidden": [64], "dropout": 0.2}})
    assert with_head.digest() != plain.digest() and with_head.head.spec().hidden == (64,)
    import hashlib
    import json

    old = plain.model_dump(exclude={"export", "head", "probe_epochs"})  # the keys 0.1 did not have
    assert plain.digest() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
