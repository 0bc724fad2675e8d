"""Worked examples beside the library: the MNIST sandbox the project is proven on (`examples.mnist`)."""
