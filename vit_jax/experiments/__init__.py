"""Experiments: commands that train many runs and report what they show.

posemb_study.py    `python -m vit_jax.experiments.posemb_study --out DIR [--quick]`: every
                   position embedding on four tasks, several seeds (what it runs)
posemb_report.py   its tables, verdicts and plots from DIR/results.json (what it shows)
statistics.py      mean ± std over seeds, paired differences and the decision rule
"""
