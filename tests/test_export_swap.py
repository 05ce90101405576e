"""A kill at any point of an export loses nothing (issue 13).

The export's three artefacts (SavedModel, .keras file, metadata.json) must always be read from the
same export: a kill between any two of the export's renames, or while it deletes what it replaced,
leaves a directory from which every reader gets one whole export (all old or all new), and the
next export completes and leaves nothing aside.

A SIGKILL stops the process with the files as they are at that instant, so each kill is simulated
by copying the run directory at that point (before the first rename, after each rename, half-way
through each deletion) while the export goes on; each copy is then read back and exported to again.
"""

from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from jarn_tf.core import export

SHAPE = (28, 28, 1)
IMAGES = tf.random.stateless_uniform([4, *SHAPE], seed=[0, 1])
ARTEFACTS = ["classifier.keras", "metadata.json", "saved_model"]


def _classifier(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(10)])


@pytest.fixture(scope="module")
def classifiers():
    """Two classifiers with clearly different logits: the old export's (step 2) and the new one's (step 3)."""
    models = {2: _classifier(0), 3: _classifier(1)}
    logits = {step: model(IMAGES, training=False).numpy() for step, model in models.items()}
    assert np.abs(logits[2] - logits[3]).max() > 1e-2
    return models, logits


def _version(loaded: export.LoadedModel, logits: dict) -> str:
    """Which export ``loaded`` is, or what is mixed: its logits' step and its metadata's step."""
    out = loaded.model_fn(IMAGES).numpy()
    matches = [step for step, want in logits.items() if np.allclose(out, want, rtol=1e-5, atol=1e-5)]
    return f"{loaded.format} logits of step {matches or '?'}, metadata of step {loaded.metadata.get('step')}"


def _readers(run_dir: str) -> list:
    """What a user passes to --model: the run's directory, its export, and the paths inside it."""
    export_dir = os.path.join(run_dir, "export")
    return [
        run_dir,
        export_dir,
        os.path.join(export_dir, "saved_model"),
        os.path.join(export_dir, "classifier.keras"),
    ]


def _check_consistent(run_dir: str, logits: dict) -> list:
    """The problems of the export in ``run_dir``: a reader that fails or mixes two exports, or
    readers that disagree on which export they read."""
    problems, seen = [], set()
    for path in _readers(run_dir):
        try:
            loaded = export.load_model(path)
        except ValueError as e:
            problems.append(f"{os.path.relpath(path, run_dir)}: {e}")
            continue
        version = _version(loaded, logits)
        step = loaded.metadata.get("step")
        if f"logits of step [{step}]" not in version:
            problems.append(f"{os.path.relpath(path, run_dir)}: {version}")
        seen.add(step)
    if len(seen) > 1:
        problems.append(f"readers disagree: metadata of steps {sorted(seen)}")
    return problems


def _kill_points(monkeypatch, run_dir: str, copies_dir: str) -> list:
    """Copies ``run_dir`` where a SIGKILL could stop the next export: before its first rename,
    after each rename, and half-way through each deletion under ``run_dir``. Returns the list the
    (label, copy) pairs are appended to."""
    copies = []
    real_rename, real_replace, real_rmtree = os.rename, os.replace, shutil.rmtree

    def inside(path) -> bool:
        return os.path.abspath(path).startswith(run_dir + os.sep)

    def copy(label: str, half_delete: str = None) -> None:
        target = os.path.join(copies_dir, f"kill{len(copies)}")
        shutil.copytree(run_dir, target, symlinks=True)
        if half_delete:  # the first entry of the directory being deleted is gone
            doomed = os.path.join(target, os.path.relpath(half_delete, run_dir))
            first = os.path.join(doomed, sorted(os.listdir(doomed))[0])
            (real_rmtree if os.path.isdir(first) else os.remove)(first)
        copies.append((label, target))

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            if inside(dst) and not copies:
                copy("before the first rename")
            real(src, dst, *args, **kwargs)
            if inside(dst):
                copy(f"after {os.path.relpath(src, run_dir)} -> {os.path.relpath(dst, run_dir)}")

        return rename

    def rmtree(path, *args, **kwargs):
        if inside(path) and os.path.isdir(path) and os.listdir(path):
            copy(f"half-way through deleting {os.path.relpath(path, run_dir)}", half_delete=path)
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(os, "rename", renamer(real_rename))
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    return copies


def _check_next_export(run_dir: str, classifier: keras.Model, logits: np.ndarray) -> list:
    """The problems of the next export into ``run_dir``: it fails, leaves something aside, or
    does not replace all three artefacts."""
    export_dir = os.path.join(run_dir, "export")
    try:
        returned = export.export_classifier(classifier, export_dir, SHAPE, metadata={"step": 4})
    except Exception as e:  # noqa: BLE001  reported with the kill point
        return [f"the next export fails: {type(e).__name__}: {e}"]
    problems = []
    if returned != os.path.join(export_dir, "saved_model"):
        problems.append(f"the next export returns {returned}")
    if sorted(os.listdir(run_dir)) != ["export"] or sorted(os.listdir(export_dir)) != ARTEFACTS:
        problems.append(
            f"the next export leaves {sorted(os.listdir(run_dir))}, {sorted(os.listdir(export_dir))}"
        )
    saved_model = tf.saved_model.load(os.path.join(export_dir, "saved_model"))
    saved = saved_model.serve(IMAGES)["logits"].numpy()
    loaded = export.load_model(run_dir)
    if not (
        np.allclose(saved, logits, rtol=1e-5, atol=1e-5)
        and np.allclose(loaded.model_fn(IMAGES).numpy(), logits, rtol=1e-5, atol=1e-5)
        and loaded.metadata.get("step") == 4
    ):
        problems.append("the next export does not replace all three artefacts")
    return problems


def test_a_kill_at_any_point_of_an_export_leaves_one_whole_export(classifiers, tmp_path, monkeypatch):
    models, logits = classifiers
    run_dir = str(tmp_path / "run")
    export.export_classifier(models[2], os.path.join(run_dir, "export"), SHAPE, metadata={"step": 2})
    assert sorted(os.listdir(run_dir)) == ["export"]
    assert sorted(os.listdir(os.path.join(run_dir, "export"))) == ARTEFACTS
    assert _check_consistent(run_dir, logits) == []

    copies = _kill_points(monkeypatch, run_dir, str(tmp_path / "copies"))
    export.export_classifier(models[3], os.path.join(run_dir, "export"), SHAPE, metadata={"step": 3})
    monkeypatch.undo()
    labels = [label for label, _ in copies]
    # The swap's two renames are among the kill points (the test does test something).
    assert sum(label.startswith("after") for label in labels) >= 2, labels

    problems = []
    for label, copy in copies:
        problems += [f"killed {label}: {p}" for p in _check_consistent(copy, logits)]
    assert not problems, "\n".join(problems)
    # What each kill leaves: the old export before the swap, the new one once it is moved in.
    first, last = copies[0][1], copies[-1][1]
    assert export.load_model(first).metadata["step"] == 2
    assert export.load_model(last).metadata["step"] == 3

    # The next export completes from whatever a kill left, and leaves nothing aside.
    for label, copy in copies:
        problems += [f"killed {label}: {p}" for p in _check_next_export(copy, models[3], logits[3])]
    assert not problems, "\n".join(problems)


def test_an_exception_between_the_renames_puts_the_previous_export_back(classifiers, tmp_path, monkeypatch):
    models, logits = classifiers
    run_dir = str(tmp_path / "run")
    export.export_classifier(models[2], os.path.join(run_dir, "export"), SHAPE, metadata={"step": 2})
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith("export.tmp-"):
            raise KeyboardInterrupt("instead of the second rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        export.export_classifier(models[3], os.path.join(run_dir, "export"), SHAPE, metadata={"step": 3})
    monkeypatch.undo()
    assert sorted(os.listdir(run_dir)) == ["export"]
    assert sorted(os.listdir(os.path.join(run_dir, "export"))) == ARTEFACTS
    assert _check_consistent(run_dir, logits) == []
    assert export.load_model(run_dir).metadata["step"] == 2


def test_an_older_versions_export_killed_between_its_saved_model_renames(classifiers, tmp_path):
    # Exports written before whole directories were swapped replaced saved_model/ alone, through
    # saved_model.old, and left their temporary files inside export/: a kill between those
    # renames left saved_model.old alone, which readers still use. The next export replaces
    # the whole directory.
    models, logits = classifiers
    run_dir = str(tmp_path / "run")
    export_dir = os.path.join(run_dir, "export")
    export.export_classifier(models[2], export_dir, SHAPE, metadata={"step": 2})
    os.rename(os.path.join(export_dir, "saved_model"), os.path.join(export_dir, "saved_model.old"))
    os.makedirs(os.path.join(export_dir, ".tmp-saved_model-abcd1234", "variables"))
    open(os.path.join(export_dir, ".metadata.json.tmp"), "w").close()
    assert _check_consistent(run_dir, logits) == []
    assert export.saved_model_path(export_dir) == os.path.join(export_dir, "saved_model.old")
    os.remove(os.path.join(export_dir, "classifier.keras"))  # the SavedModel is read when alone
    loaded = export.load_model(run_dir)
    assert loaded.format == "saved_model" and loaded.path == os.path.join(export_dir, "saved_model.old")
    np.testing.assert_allclose(loaded.model_fn(IMAGES).numpy(), logits[2], rtol=1e-5, atol=1e-5)
    assert _check_next_export(run_dir, models[3], logits[3]) == []


def test_evaluate_writes_next_to_the_run_not_inside_a_leftover_export_old(tmp_path):
    # After a kill inside the swap only export.old exists; evaluate's default
    # output must not go inside it (the next export deletes it).
    import types

    from jarn_tf import evaluate

    for export_name in ("export", "export.old"):
        model = types.SimpleNamespace(
            model_dir=None, path=str(tmp_path / "run" / export_name / "classifier.keras")
        )
        assert evaluate._default_output_dir(model) == str(tmp_path / "run" / "eval")
