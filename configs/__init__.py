"""The experiment configs, one file each; installed with the package as `vit_jax.configs`, so
that `--config=NAME` (e.g. `vit-train --config=digits`) finds them wherever it runs."""
