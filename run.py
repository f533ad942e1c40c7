"""Entry point: ``python run.py experiment=mnist_consistency [scale=quick] [seed=2] [logger=wandb]``."""

from pathlib import Path

from labelfree.runtime import use_huge_page_allocations

use_huge_page_allocations()  # before anything imports torch: read once per process (labelfree/runtime.py)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from experiments.runner import run  # noqa: E402


@hydra.main(config_path="configs", config_name="run", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
