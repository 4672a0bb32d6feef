"""Test-session setup: share compiled XLA programs between tests through a persistent cache."""

import os

import jax


def pytest_configure(config):
    path = os.environ.get("PPL_TEST_CACHE_DIR", os.path.join(str(config.rootpath), ".pytest_cache", "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
