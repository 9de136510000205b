"""The commands of the runtime package, importable so that an installed package runs them.

Each module has ``cli(argv=None) -> int`` (the exit status), run by a console script of the install,
by ``python -m``, and by the repository's thin root scripts:

============================  ==============================  =========================
console script                ``python -m``                   in a source tree
============================  ==============================  =========================
``usb-cfsg-train``            ``usb_cfsg.cli.train``          ``python train.py``
``usb-cfsg-eval``             ``usb_cfsg.cli.eval``           ``python eval.py``
``usb-cfsg-predict``          ``usb_cfsg.cli.predict``        ``python predict.py``
============================  ==============================  =========================

This package imports nothing heavy itself: ``--help`` and configuration errors come before torch loads.
"""
