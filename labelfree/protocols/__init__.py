"""The paper's measurements as library functions: objects (models, explainers, tensors, settings) in,
tidy DataFrames out. No config, no run folder, no files.

* :mod:`~labelfree.protocols.consistency`: consistency of feature and example importance;
* :mod:`~labelfree.protocols.roar`: RemOve And Retrain;
* :mod:`~labelfree.protocols.pretext`: explanations compared across pretext tasks;
* :mod:`~labelfree.protocols.disvae`: latent units' saliency maps of disentangled VAEs.
"""
