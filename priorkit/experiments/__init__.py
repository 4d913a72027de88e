"""One small-scale reproduction per method id: ``priorkit/experiments/<id>.py`` defines ``EXPERIMENT``."""
