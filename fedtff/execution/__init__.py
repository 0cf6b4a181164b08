"""Where TFF computations execute: the local worker, remote workers, the worker entry point."""
