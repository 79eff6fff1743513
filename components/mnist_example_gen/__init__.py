"""ExampleGen for folders of MNIST-format IDX files."""
