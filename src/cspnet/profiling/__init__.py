"""Costs as the CSPNet paper counts them: parameters, MACs, darknet BFLOPs, CIO, activation memory.

>>> from cspnet.profiling import profile
>>> p = profile("cspdensenet_bc100")
>>> p.input_size, p.params > 0, [g.name for g in p.groups]
((3, 32, 32), True, ['stem', 'stages.0', 'stages.1', 'stages.2', 'head'])
"""

from cspnet.profiling.latency import measure_latency
from cspnet.profiling.profiler import GroupCost, LayerCost, ModelProfile, profile, profile_many

__all__ = ["GroupCost", "LayerCost", "ModelProfile", "measure_latency", "profile", "profile_many"]
