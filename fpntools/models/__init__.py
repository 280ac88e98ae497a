"""Model zoo: equilibrium models built on :class:`fpntools.FixedPoint`.

* :class:`DEQMLP`: fully connected DEQ (classification / regression).
* :class:`DEQLanguageModel` with :class:`DEQTransformerLayer` or :class:`TrellisNetLayer`: causal
  sequence DEQs for language modelling (``depth=L`` gives the explicit weight-tied baseline).
* :class:`MDEQClassifier`, :class:`MDEQSegmenter`: multiscale DEQ with fusion, GroupNorm, weight norm.
* :class:`SIMClassifier`: stable invariant models (single- and two-tier), trained like feedforward nets.
* :class:`FPNClassifier`, :class:`ConvFPNClassifier`: fixed-point networks trained with JFB (or implicitly).

Every model returns a :class:`ZooOutput` (``logits``, solve ``infos``, ``aux_loss``); solving and
Jacobian regularisation are configured by :class:`SolveConfig` / :class:`JacobianRegConfig`.
"""

from fpntools.models.base import (
    JacobianRegConfig,
    SolveConfig,
    ZooOutput,
    check_tensor,
    count_parameters,
    fixed_point_modules,
    make_fixed_point,
)
from fpntools.models.deq import DEQMLP, MLPBlock, unroll
from fpntools.models.deq_seq import DEQLanguageModel, DEQTransformerLayer, TrellisNetLayer
from fpntools.models.fpn import ConvFPNClassifier, ConvFPNLayer, FPNClassifier, FPNLayer
from fpntools.models.mdeq import MDEQBackbone, MDEQClassifier, MDEQLayer, MDEQSegmenter
from fpntools.models.sim import RandomFourierFeatures, SIMClassifier

__all__ = [
    "ConvFPNClassifier",
    "ConvFPNLayer",
    "DEQLanguageModel",
    "DEQMLP",
    "DEQTransformerLayer",
    "FPNClassifier",
    "FPNLayer",
    "JacobianRegConfig",
    "MDEQBackbone",
    "MDEQClassifier",
    "MDEQLayer",
    "MDEQSegmenter",
    "MLPBlock",
    "RandomFourierFeatures",
    "SIMClassifier",
    "SolveConfig",
    "TrellisNetLayer",
    "ZooOutput",
    "check_tensor",
    "count_parameters",
    "fixed_point_modules",
    "make_fixed_point",
    "unroll",
]
