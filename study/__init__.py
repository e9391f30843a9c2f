"""kd-study: which surrogate dataset should I distill on?

Implements the study of Frank & Davis, "What Makes a Good Dataset for Knowledge Distillation?" (CVPR 2025,
arXiv:2411.12817) as a tool: surrogates as WebDataset shards, KD trials under Ray Tune with a per-surrogate
Optuna search, teacher-side criteria and a report, all tracked in MLflow.
"""

__version__ = "0.1.0"
