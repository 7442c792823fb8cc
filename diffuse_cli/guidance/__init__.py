"""Guided sampling: classifier guidance (Dhariwal & Nichol 2021) and classifier-free guidance
(Ho & Salimans 2022), as wrappers around the network, so every sampler can use them.

A guided "model" is a callable model(x_t, t, y) with original timesteps t and labels y, like a
class-conditional network; the samplers receive y through model_kwargs as usual.
"""

from .classifier_free import ClassifierFree
from .classifier_guidance import ClassifierGradient, DenoiserShift, EpsShift
from .labels import WithLabels

__all__ = ["ClassifierFree", "ClassifierGradient", "DenoiserShift", "EpsShift", "WithLabels"]
