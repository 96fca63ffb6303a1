"""fmnist-jax: the ConvNets-on-Fashion-MNIST exercise in JAX/Flax."""
