"""The experiment configs, one `get_config()` per file; installed as `fmnist_jax.experiments`."""
