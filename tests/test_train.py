"""Training loop: resumable folds equal uninterrupted ones; units, selection and summaries."""

import json

import pytest
import torch

import glam_fast
from glam_fast import train
from glam_fast.protocols import speaker_folds

CLASSES = ["a", "b", "c"]


def synthetic_glam_features(n_utterances=12, seed=0, shape=(26, 57)):
    g = torch.Generator().manual_seed(seed)
    labels = [i % 3 for i in range(n_utterances)]
    # class-dependent offsets so that a few epochs learn something
    features = [{"features": torch.randn(2, *shape, generator=g) + 0.5 * labels[i]} for i in range(n_utterances)]
    speakers = [f"s{i % 4}" for i in range(n_utterances)]
    return features, labels, speakers


def _units_for(features, labels):
    return lambda index: train.build_units("glam", [features[i] for i in index], [labels[i] for i in index])


def test_build_units_glam_flattens_segments_and_keeps_utterances():
    features, labels, _ = synthetic_glam_features(5)
    units = train.build_units("glam", features, labels)
    assert units.inputs.shape == (10, 1, 26, 57)
    assert units.utterance.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert units.labels.tolist() == [labels[i] for i in units.utterance.tolist()]
    assert train._utterance_labels(units).tolist() == labels


def test_utterance_logits_average_segments():
    features, labels, _ = synthetic_glam_features(3)
    units = train.build_units("glam", features, labels)
    model = train.build_model("glam", 3).eval()
    per_segment = model(units.inputs)
    expected = per_segment.view(3, 2, 3).mean(1)
    torch.testing.assert_close(train.utterance_logits(model, units, batch_size=4), expected, rtol=1e-5, atol=1e-5)


def test_default_args_follow_the_recipes():
    glam = train.default_args("glam")
    assert (glam.epochs, glam.batch_size, glam.lr, glam.weight_decay, glam.lr_decay, glam.mixup_alpha) == (50, 32, 1e-3, 1e-6, 0.95, 0.5)
    mssenet = train.default_args("mssenet", epochs=3)
    assert mssenet.betas == (0.93, 0.98) and mssenet.label_smoothing == 0.1 and mssenet.epochs == 3
    with pytest.raises(ValueError, match="unknown model"):
        train.default_args("resnet")


def _run_fold(folder, epochs=3):
    features, labels, speakers = synthetic_glam_features()
    split = speaker_folds(speakers, 2)[0]
    args = train.default_args("glam", epochs=epochs, batch_size=8)
    return train.train_fold(split, _units_for(features, labels), CLASSES, args, folder, {}, torch.device("cpu"), progress=train._Progress(enabled=False))


@pytest.mark.slow
def test_killed_fold_resumes_to_the_same_result(tmp_path, monkeypatch):
    uninterrupted = _run_fold(tmp_path / "full")
    real_epoch, calls = train.train_epoch, []

    def dies_in_epoch_three(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_epoch(*a, **k)

    monkeypatch.setattr(train, "train_epoch", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        _run_fold(tmp_path / "killed")
    assert (tmp_path / "killed" / "state" / "LATEST").read_text() == "epoch_0002"
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    resumed = _run_fold(tmp_path / "killed")
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in uninterrupted["history"]]
    assert resumed["test"] == uninterrupted["test"] and resumed["selected_epoch"] == uninterrupted["selected_epoch"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed" / "state").exists()  # removed once the fold is done
    # a finished fold is not trained again
    again = _run_fold(tmp_path / "killed")
    assert again == json.loads((tmp_path / "killed" / "metrics.json").read_text())


def test_summarise():
    folds = [{"test": {"wa": w, "ua": w - 0.1, "macro_f1": 0.5, "weighted_f1": 0.6, "confusion": [[1, 0], [0, 1]], "classes": ["x", "y"]}} for w in (0.6, 0.8)]
    s = train.summarise(folds)
    assert s["wa"]["mean"] == pytest.approx(0.7) and s["wa"]["std"] == pytest.approx(0.1)
    assert s["confusion"] == [[2, 0], [0, 2]]


def _train_steps(backend: str, make_optimizer, epochs: int, shape=(14, 24)):
    # a smaller segment than the recipe's 26x57 keeps the interpreter affordable; every layer is there
    features, labels, _ = synthetic_glam_features(4, shape=shape)
    units = train.build_units("glam", features, labels)
    torch.manual_seed(0)
    model = train.build_model("glam", 3, input_shape=shape)
    args = train.default_args("glam", batch_size=4, backend=backend)
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(0)
    with glam_fast.backend(backend):
        losses = [train.train_epoch(model, optimizer, units, args, generator) for _ in range(epochs)]
    return losses, model.state_dict()


@pytest.mark.slow
def test_fused_training_equals_reference_training():
    """The same seed and data (mixup included) through backend torch and backend triton (the
    interpreter on the CPU) give the same losses and weights.

    Weights are compared after SGD steps. After Adam steps they are not comparable element by
    element: the biases of convolutions followed by BatchNorm have a gradient that is exactly zero
    in exact arithmetic, and Adam normalises the rounding noise each implementation leaves there
    into full-size steps of random sign. The Adam run (the GLAM recipe) is compared by its losses.
    """
    adam = lambda params: torch.optim.Adam(params, lr=1e-3, weight_decay=1e-6)  # noqa: E731
    ref_losses, _ = _train_steps("torch", adam, 2)
    fused_losses, _ = _train_steps("triton", adam, 2)
    assert fused_losses == pytest.approx(ref_losses, rel=1e-4)

    sgd = lambda params: torch.optim.SGD(params, lr=0.01)  # noqa: E731  (a stable step: no chaotic amplification)
    ref_losses, ref_state = _train_steps("torch", sgd, 1)
    fused_losses, fused_state = _train_steps("triton", sgd, 1)
    assert fused_losses == pytest.approx(ref_losses, rel=1e-4)
    for key, value in ref_state.items():
        torch.testing.assert_close(fused_state[key], value, rtol=1e-4, atol=1e-5, msg=key)
