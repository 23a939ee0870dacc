"""Benchmarks of speechcl against transformers' Wav2Vec2 on the same config and weights.

- :mod:`speechcl.bench.pretrain` — a pretraining step: speed (fp32, bf16), peak memory, FLOP/s against a
  matmul, and the bf16-vs-fp32 loss trajectory;
- :mod:`speechcl.bench.inference` — ``extract_features`` vs ``Wav2Vec2Model``: speed and bf16 accuracy;
- :mod:`speechcl.bench.extraction` — ``speechcl extract`` vs a plain transformers loop, whole processes;
- :mod:`speechcl.bench.timing`, :mod:`~speechcl.bench.memory`, :mod:`~speechcl.bench.flops` — alternated
  timing with medians, per-step peak memory in a fresh process, FLOP counting;
- :mod:`speechcl.bench.reference` — the transformers side (same config and weights as ours);
- :mod:`speechcl.bench.report` — the targets (CPU and GPU sets) and the PASS/MISS table;
- :mod:`speechcl.bench.attention` — fused SDPA kernels and padding masks in every attention mode;
- :mod:`speechcl.bench.syncs` — host round trips of a call, by source line;
- :mod:`speechcl.bench.gpu_check` — every GPU measurement in one run (``tools/gpu_check.sh``), with a CPU
  dry run.

The command line is ``speechcl bench {pretrain,inference,extract,all}`` (:mod:`speechcl.bench.commands`)
and ``tools/bench_*.py``. Submodules are imported on use: transformers comes with the ``bench`` extra
(``pip install 'speechcl[bench]'``), and the other verbs run without it.
"""
