"""Started by test_ddp.py under torchrun: train one epoch, then save this rank's weights.

    python -m torch.distributed.run --nproc_per_node 2 --standalone tests/runtime/ddp_worker.py ROOT RUN_DIR WEIGHTS_DIR [DECODER]
"""

import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from caswit_geo.engine.train.training import TrainConfig, train


def main(root: str, run_dir: str, weights_dir: str, decoder: str = "upernet") -> None:
    result = train(TrainConfig(model="caswit-nano", dataset="tiles", root=Path(root), out=Path(run_dir), epochs=1,
                               batch_size=2, workers=0, crops_per_image=2, device="cpu", progress=False,
                               decoder=decoder))
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    save_file(state, str(Path(weights_dir) / f"rank{os.environ['RANK']}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
