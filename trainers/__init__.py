"""Training side of bayescale: phantom data, tiny 3D masked autoencoders and the runs that make a loss grid."""
