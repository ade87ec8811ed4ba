"""provision: bare-metal GPU fleet provisioning and distributed PyTorch launching over SSH."""

__version__ = "0.1.0"
