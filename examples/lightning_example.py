"""Lightning with WatchdogCallback; resumes from the watchdog's newest checkpoint.

pip install 'gpu-job-watchdog[lightning]'
python examples/lightning_example.py --steps 200
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch

from watchdog.integrations.lightning import WatchdogCallback


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--checkpoint-dir", default="checkpoints/lightning")
    args = parser.parse_args()

    data = torch.utils.data.TensorDataset(torch.randn(512, 8), torch.randn(512, 1))
    callback = WatchdogCallback(checkpoint_dir=args.checkpoint_dir)
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[callback],
    )
    trainer.fit(
        Regressor(),
        torch.utils.data.DataLoader(data, batch_size=32),
        ckpt_path=callback.latest_checkpoint(),
    )
    print(f"finished at step {trainer.global_step}")


if __name__ == "__main__":
    main()
