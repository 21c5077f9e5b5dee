"""mechscope.circuits"""
