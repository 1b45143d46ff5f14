"""Training: the LightningModule, callbacks, the LightningCLI and checkpoint loading."""
