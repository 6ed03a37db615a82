"""Engine tier: the sandbox origin (the test extra) or the test tools, no FUSE mount."""
