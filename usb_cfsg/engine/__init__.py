"""Device, data-order, checkpoint and launch glue that semilearn 0.3.2 lacks."""
from .launch import main, worker
from .plugin import PluginMixin, build_algorithm

__all__ = ["PluginMixin", "build_algorithm", "main", "worker"]
