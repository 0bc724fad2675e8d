"""The MNIST sandbox: real MNIST and Moving-MNIST data made offline, a small T5 and VAE for them, the two demos and
their benchmarks. Run its modules from the repository root: `python -m examples.mnist.demo`."""
