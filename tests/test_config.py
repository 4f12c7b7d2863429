"""The config schema: locked keys, type checks and value validation with actionable errors."""

import ml_collections
import pytest

from jaxvision import config as config_lib


def test_misspelt_key_in_config_file_fails_with_the_key_name():
    c = config_lib.base()
    c.lock()
    with pytest.raises(AttributeError, match="optimiser"):
        c.optimiser = ml_collections.ConfigDict()


def test_wrongly_typed_value_fails():
    c = config_lib.base()
    with pytest.raises(TypeError, match="batch_size"):
        c.batch_size = "big"


def test_config_not_built_on_base_is_checked_for_unknown_keys():
    c = config_lib.base()
    c.unlock()
    c.optimizer.learning_rte = 0.1
    with pytest.raises(ValueError, match=r"optimizer.learning_rte.*Did you mean 'learning_rate'"):
        config_lib.check_keys(c)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("batch_size", 30, "not divisible by the number of devices"),
        ("num_train_steps", 0, "num_train_steps"),
        ("log_every_steps", 0, "log_every_steps"),
    ],
)
def test_validate_rejects_bad_values(key, value, message):
    c = config_lib.base()
    c[key] = value
    if key == "num_train_steps":
        c.num_epochs = 0.0
    with pytest.raises(ValueError, match=message):
        config_lib.validate(c, num_devices=4, num_processes=1)


def test_validate_rejects_unknown_model_and_optimizer_names():
    c = config_lib.base()
    c.model.name = "resnet_9000"
    with pytest.raises(ValueError, match=r"Unknown model name 'resnet_9000'.*cnn"):
        config_lib.validate(c, num_devices=1, num_processes=1)
    c = config_lib.base()
    c.optimizer.name = "adamm"
    with pytest.raises(ValueError, match=r"Unknown optimizer.name 'adamm'.*Did you mean 'adam"):
        config_lib.validate(c, num_devices=1, num_processes=1)


def test_smoke_arg_switches_online_datasets_to_offline_shapes():
    c = config_lib.base()
    c.dataset.name = "cifar10"
    c = config_lib.finalize(c, "smoke")
    assert c.dataset.name == "shapes"
    assert c.num_train_steps == 20


def test_load_reads_a_config_file_with_its_arg():
    c = config_lib.load("configs/quickstart.py:smoke")
    assert c.num_train_steps == 20 and c.model.name == "cnn"
    with pytest.raises(FileNotFoundError, match=r"nope\.py"):
        config_lib.load("configs/nope.py")
