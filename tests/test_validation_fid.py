"""`--validation_fid_reference`: FID of the EMA weights at each validation, logged to the trackers."""

import numpy as np
import pytest
from accelerate import Accelerator
from diffusers import DiffusionPipeline

from dit_pipelines.evaluation import save_batch
from dit_pipelines.training.validation_fid import ValidationFID, ValidationFIDConfig
from training.train_dit import main, parse_args

from .test_training import bars, fresh_accelerate_state, tiny_args  # noqa: F401 (fixtures)


@pytest.fixture
def reference(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "reference.npz"
    save_batch(str(path), rng.integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8))
    return str(path)


def test_training_logs_the_fid_of_the_ema_weights(bars, reference, tmp_path, monkeypatch):  # noqa: F811
    logged = []
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **_: logged.append((step, values)))
    options = "--max_train_steps 4 --validation_steps 2 --validation_fid_samples 6 --validation_fid_batch_size 4"
    out = main(parse_args(tiny_args(bars, tmp_path / "run", *options.split(), "--validation_fid_reference", reference)))
    fids = {step: values["validation_fid"] for step, values in logged if "validation_fid" in values}
    assert sorted(fids) == [2, 4] and all(value > 0 for value in fids.values()) and fids[2] != fids[4]

    # the last one, recomputed from the saved pipeline (its weights are the EMA weights of step 4)
    pipe = DiffusionPipeline.from_pretrained(out)
    config = ValidationFIDConfig(reference, validation_fid_samples=6, validation_fid_batch_size=3)
    again = ValidationFID(config, "cpu", guidance_scale=4.0, num_inference_steps=3)(pipe, seed=0)
    assert again == pytest.approx(fids[4], rel=1e-4)  # another batch size: the same samples, same features


def test_bad_fid_requests_fail_before_training(bars, tmp_path, reference):  # noqa: F811
    np.savez(tmp_path / "chw.npz", np.zeros((4, 3, 8, 8), dtype=np.uint8))
    cases = [
        (["--validation_fid_reference", str(tmp_path / "chw.npz"), "--validation_steps", "2"], "chw.npz: 'arr_0'"),
        (["--validation_fid_reference", reference], "needs --validation_steps"),
        (
            ["--validation_fid_reference", reference, "--validation_steps", "2", "--validation_fid_samples", "1"],
            "at least 2",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            main(parse_args(tiny_args(bars, tmp_path / "run", "--max_train_steps", "1", *extra)))
