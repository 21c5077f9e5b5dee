"""mechscope.sae"""
