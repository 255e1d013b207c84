"""Any CNN: load a model, find its coupled channel groups, count FLOPs, collect per-class statistics, prune
with mean compensation (see docs/anycnn.md).

Modules: :mod:`.source` (three ways to bring a model), :mod:`.pt2` (a ``torch.export`` program back into
modules), :mod:`.ops` (the supported-op check), :mod:`.groups` (channel groups from torch-pruning's
``DependencyGraph``), :mod:`.flops`, :mod:`.stats`, :mod:`.surgery`.
"""
