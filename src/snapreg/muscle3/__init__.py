"""The MUSCLE3 boundary: ``snapreg manage``, and every use of MUSCLE3's internals
behind one module that knows which releases it supports.
"""
