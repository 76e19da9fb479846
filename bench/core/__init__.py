"""What every stage shares: a run's settings, MNIST and its splits, devices, random streams, signals."""
