"""otaship's benchmark suite: what devices and CI feel, next to baselines from the same run.

`python -m bench` (or `make bench`) runs it and prints one table; see bench/__main__.py.
Only ratios from one run mean anything: the machine is shared and noisy.
"""
