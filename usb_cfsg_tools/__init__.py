"""Tools beside the runtime package ``usb_cfsg`` (as ``open_clip_train`` sits beside ``open_clip``).

* :mod:`usb_cfsg_tools.compare`: the comparison runner (``usb-cfsg-compare``,
  ``python -m usb_cfsg_tools.compare``): algorithms and variants over seeds, one training process each.
* :mod:`usb_cfsg_tools.demo_clip`: the offline demo CLIP builder (``usb-cfsg-demo-clip``,
  ``python -m usb_cfsg_tools.demo_clip``).

They import the runtime package; the runtime package never imports them, so a training run loads none
of their code.
"""
