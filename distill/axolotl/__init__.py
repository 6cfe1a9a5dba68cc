"""From the factory's dataset to Axolotl: export (SFT / KD rows), curriculum stages, and rendered configs."""
