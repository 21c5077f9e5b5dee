"""mechscope.kernels"""
