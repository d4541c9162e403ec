"""The bundled example: a Fashion-MNIST CNN and 1,000 labelled test images."""
