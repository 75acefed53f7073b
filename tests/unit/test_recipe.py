from __future__ import annotations

from pathlib import Path

import pytest

from compression.errors import RecipeError
from compression.recipe import LayersArchitecture, load_recipe, select_students

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MINIMAL = "name: t\nstudents:\n  - name: s\n    architecture: {kind: layers, layers: [0]}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["tiny.yaml", "full.yaml"])
def test_bundled_recipes_validate(name: str) -> None:
    recipe = load_recipe(RECIPES / name)
    assert recipe.students and recipe.name == name.removesuffix(".yaml")


def test_minimal_recipe_gets_defaults(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert isinstance(recipe.students[0].architecture, LayersArchitecture)
    assert recipe.teacher.kind == "hf" and recipe.preprocessing.max_length == 64


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (MINIMAL + "colour: red\n", "colour"),
        (MINIMAL.replace("layers: [0]", "layers: [0], depth: 3"), "students.0.layers.depth"),
        ("name: t\n", "students"),
        (MINIMAL + "preprocessing: {max_length: 2}\n", "preprocessing.max_length"),
        (MINIMAL.replace("kind: layers", "kind: lstm"), "students.0.architecture"),
        (MINIMAL + "data: {source: file}\n", "data.path"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(RecipeError, match=names.split(".")[0]) as caught:
        load_recipe(write(tmp_path, text))
    assert "\n" not in str(caught.value)


def test_unreadable_and_non_mapping_recipes(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(write(tmp_path, "name: [unclosed\n"))


def test_relative_paths_resolve_against_the_recipe_folder(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL + "data: {source: file, path: reviews.csv}\n"))
    assert recipe.data.path == tmp_path / "reviews.csv"


def test_students_are_selected_by_name_in_recipe_order() -> None:
    recipe = load_recipe(RECIPES / "tiny.yaml")
    everyone = [s.name for s in recipe.students]
    assert [s.name for s in select_students(recipe, ())] == everyone
    assert [s.name for s in select_students(recipe, everyone[::-1][:2])] == everyone[1:]
    with pytest.raises(RecipeError, match=r"student 'minilm' is not in recipe tiny \(its students: minilm-l2, "):
        select_students(recipe, ["minilm"])
