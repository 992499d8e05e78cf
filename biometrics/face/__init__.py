"""Face algorithms: detection with five landmarks, quality, alignment, embedding, liveness logic."""
