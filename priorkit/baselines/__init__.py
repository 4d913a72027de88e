"""Other papers' baselines that priorkit's experiments compare against (one module per kind of task).

``ood`` (SSD+, Mahalanobis, KNN+, energy scores), ``mil`` (gated attention MIL, naive instance MIL),
``fewshot`` (SimpleShot and nearest-prototype baselines), ``gmp`` (gradual and one-shot magnitude pruning).
They live apart from the methods, as pytorch-ood keeps detectors apart from losses.
"""
