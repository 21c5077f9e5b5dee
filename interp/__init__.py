"""mechscope.interp"""
