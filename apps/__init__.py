"""mechscope.apps"""
