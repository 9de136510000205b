"""Device, data-order, checkpoint and launch glue that semilearn 0.3.2 lacks."""

from .. import register as _register

# Register nets, algorithms, datasets and the run hooks (usb_cfsg.evaluation) before importing plugin.py
# ourselves: registering imports semilearn, whose import hook (usb_cfsg/__init__.py) imports our
# algorithms, which import engine.plugin; starting from engine.plugin instead would meet it half-initialised.
_register()

from .launch import main, worker  # noqa: E402
from .plugin import PluginMixin, build_algorithm  # noqa: E402

__all__ = ["PluginMixin", "build_algorithm", "main", "worker"]
