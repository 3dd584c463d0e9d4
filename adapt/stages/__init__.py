"""Training stages (SFT, DPO) and the demo pipeline, each runnable as a module under `accelerate launch`."""
