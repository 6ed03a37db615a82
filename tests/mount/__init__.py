"""Mount tier: real FUSE mounts against the sandbox origin."""
