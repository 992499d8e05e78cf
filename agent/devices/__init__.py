"""The daemon's devices: each owned by one worker, with capabilities, kept open by one supervisor."""
