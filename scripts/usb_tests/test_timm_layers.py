"""semilearn's nets import timm's layers from timm.layers (timm.models.layers only on timm < 0.9)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: imports semilearn.nets in a fresh interpreter (the warnings of the first import) and reports them as JSON
CHECK = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import semilearn.nets.vit.vit as vit
try:
    import timm.layers as layers
except ImportError:
    import timm.models.layers as layers
print(json.dumps({
    "file": vit.__file__,
    "warnings": [str(w.message) for w in caught if "timm" in str(w.message)],
    "same": [getattr(vit, n) is getattr(layers, n) for n in ("DropPath", "to_2tuple")],
}))
"""


def test_nets_import_timm_layers_without_the_deprecated_path():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(ROOT.resolve()), out["file"]
    assert out["warnings"] == []
    assert out["same"] == [True, True]
