"""The on-disk compilation cache: switched on where it can be, never in the way of a run."""

import jax
import pytest

from jaxvision.backend import compile_cache


@pytest.fixture
def restored_config():
    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def test_enable_points_jax_at_the_directory(tmp_path, restored_config):
    assert compile_cache.enable(str(tmp_path / "xla"))
    assert (tmp_path / "xla").is_dir()
    assert jax.config.jax_enable_compilation_cache
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")


def test_a_directory_that_cannot_be_made_only_warns(tmp_path, restored_config):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(UserWarning, match="cannot create"):
        assert not compile_cache.enable(str(blocker / "xla"))
    assert not jax.config.jax_enable_compilation_cache
