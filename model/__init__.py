"""VideoReward model: video pre-processing, reward model and scoring."""
