"""Run a script unmodified with `torchvision.transforms` provided by `torchvision_transforms.py`.

torchvision's wheel does not import beside the CPU build of torch pinned here (STACK.md), and
diffusers' `examples/controlnet/train_controlnet.py` imports it only for Resize, CenterCrop,
ToTensor and Normalize. transformers and diffusers are imported first, so they still see no
torchvision (they would otherwise import its other modules; `datasets` too); then the stand-in is registered
and the script runs as `__main__` with the remaining arguments.

    python run_script.py SCRIPT [ARGS ...]
"""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path


def main() -> None:
    import datasets  # noqa: F401 - each decides "no torchvision" before the stand-in exists
    import diffusers  # noqa: F401
    import transformers
    from diffusers.utils import is_torchvision_available as diffusers_has_tv

    assert not transformers.utils.is_torchvision_available() and not diffusers_has_tv()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torchvision_transforms

    package = types.ModuleType("torchvision")
    package.transforms = torchvision_transforms
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, torchvision_transforms
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
