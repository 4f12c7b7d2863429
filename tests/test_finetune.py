"""config.pretrained: a new run starts from a checkpoint file, with a new head if needed."""

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from jaxvision import checkpoint, models, train
from jaxvision import config as config_lib


def _vit_config(tmp_path, pretrained):
    c = config_lib.base()
    c.model = config_lib.model("vit_ti4", image_size=32, depth=2)
    c.dataset.name = "shapes"
    c.dataset.num_classes = 4
    c.batch_size = 16
    c.num_train_steps = 1
    c.optimizer.learning_rate = 1e-9  # one step that barely moves the weights
    c.log_every_steps = 1
    c.pretrained = pretrained
    return config_lib.finalize(c, None)


def test_new_run_starts_from_pretrained_weights_with_a_fresh_head(tmp_path):
    source = models.create("vit_ti4", num_classes=7, image_size=32, depth=2)
    params = source.init(jax.random.PRNGKey(42), np.zeros((1, 32, 32, 3)))["params"]
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    path = str(tmp_path / "vit.npz")
    np.savez(path, **flat)

    workdir = str(tmp_path / "run")
    config = _vit_config(tmp_path, path)
    train.run(config, workdir)
    s = train._build(config)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
    state, _, _ = ckpts.restore_latest(s.abstract_state)
    tuned = {
        "/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(state.params).items()
    }
    kernel = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
    np.testing.assert_allclose(tuned[kernel], flat[kernel], atol=1e-6)
    assert tuned["head/kernel"].shape == (192, 4)  # 7-way head replaced by a 4-way one


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    config = _vit_config(tmp_path, str(tmp_path / "nope.npz"))
    with pytest.raises(ValueError, match=r"nope\.npz.*is not a file"):
        train.run(config, str(tmp_path / "run"))


def test_timm_vit_file_makes_the_run_use_the_exact_gelu(tmp_path):
    from safetensors.numpy import save_file

    path = str(tmp_path / "timm_vit.safetensors")
    save_file({"patch_embed.proj.weight": np.zeros((192, 3, 4, 4), np.float32)}, path)
    config = _vit_config(tmp_path, path)
    resolved = train.with_pretrained_overrides(config)
    # Recorded in the run's config (config.json), so evaluate/predict rebuild the same model.
    assert resolved.model.gelu_approximate is False and resolved.is_locked
    assert "gelu_approximate" not in config.model  # the caller's config is left alone
    with config.unlocked():
        config.model.gelu_approximate = True  # an explicit choice wins
    assert train.with_pretrained_overrides(config).model.gelu_approximate is True
