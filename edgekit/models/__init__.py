"""The models layer: the architecture registry, the checkpoint format, and loading any checkpoint (FP32
or INT8) as a torch module. Above the foundation (edgekit.core), below the runtimes and everything else.
torch is imported inside the functions that need it."""
