"""Benchmarks for glam_fast: the peers (eager, autocast, torch.compile) and every glam_fast backend,
measured side by side on the same inputs, with every run kept as a JSON file under bench/results/.

- ``registry.py``: the models and the variants (how each one is built and run).
- ``bench_models.py`` (+ ``conftest.py``): the CPU suite, pytest-benchmark.
- ``bench_inference_cpu.py``, ``bench_scoring.py``, ``bench_features.py``: the CPU inference forms,
  batch scoring and the audio front end (pytest-benchmark); ``paired_cpu.py``: the CPU inference
  forms against eager and compile in paired rounds, ``python -m bench.paired_cpu --out FILE``.
- ``gpu.py``: the GPU runner, ``python -m bench.gpu --out DIR``.
- ``report.py``: regenerates bench/README.md and the plots from all result files.
- ``gpu_check.sh``: build, tests, compile report, GPU runner and report in one command;
  ``summary.py`` prints its closing table.
- ``environment.py`` (devices, versions, commit, file names), ``timing.py`` (timer, ceilings).
"""
