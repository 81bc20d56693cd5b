"""Benchmark harness behind ``tools/benchmark.py`` (``make bench``).

``models``: the compared models, built from mmdet's packaged configs with one
shared backbone and neck; ``measure``: latency, training step, memory and
post-processing measurements; ``worker``: the per-model memory processes;
``accuracy``: equal-budget training and COCO evaluation; ``report``: the
Markdown document and PNG plots.
"""
