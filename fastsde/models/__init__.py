"""Score models: analytic Gaussian mixtures (exact scores) and NCSN++/DDPM++-style U-Nets."""
from fastsde.models.ncsnpp import UNet, UNetConfig, get_preset, load_checkpoint, save_checkpoint

__all__ = ["UNet", "UNetConfig", "get_preset", "save_checkpoint", "load_checkpoint"]
