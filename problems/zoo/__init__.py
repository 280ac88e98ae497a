"""Model-zoo tasks: small experiments, each showing one claim of a paper at a scale a CPU runs.

* :mod:`problems.zoo.memory`: DEQ training memory is constant in depth (Bai et al. 2019).
* :mod:`problems.zoo.tasks`: JFB vs implicit training of an FPN (Wu Fung et al. 2022), Jacobian
  regularisation (Bai et al. 2021) on digits and a 1-D synthetic regression, SIM vs DEQ vs MDEQ at equal
  parameter count (Konishi & Kawahara 2023), DEQ-Transformer character-level language modelling.

* :mod:`problems.zoo.train`: one zoo model described by a size-checked :class:`~problems.zoo.train.ZooSpec`,
  trained with :class:`fpntools.training.Trainer` (run folder, exact resume, devices, ``torchrun``), saved
  as ``model.pt``, loaded and evaluated.

``fpntools bench zoo`` runs the experiments and prints the tables; ``fpntools zoo train`` trains one zoo
model (also under ``torchrun`` for multi-process data-parallel training), ``fpntools zoo eval`` evaluates it.
"""
