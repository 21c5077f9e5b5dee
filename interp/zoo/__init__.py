"""mechscope.interp.zoo"""
