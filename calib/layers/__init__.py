"""The layers of the reference NumPy CNN (calib.cnn), one module per kind: each runs its ops
forward and backward with the kernels of calib.kernels, times them and reports their arrays."""
