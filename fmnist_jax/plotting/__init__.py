"""The exercise's figures, drawn from what runs left in their workdirs; nothing is rerun.

    python -m fmnist_jax.plotting --runs runs --out figures [--smoothing 0.6]

`curves`: figures 2–6 (learning curves, TensorBoard-smoothed) from the runs' `metrics.jsonl`;
`adversarial`: Figure 7 and the attack's curves. Runs are read through `fmnist_jax.rundir`
(`rundir.read_run`); no TensorFlow is imported. The train loop never imports
this package.
"""
