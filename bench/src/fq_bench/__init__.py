"""fq-bench: the paper's grid (:mod:`fq_bench.grid`) and the performance suite's scripts.

The data path is the separate package ``fq_data``.
"""
