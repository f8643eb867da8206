"""Efficient-CapsNet's self-attention routing (Mazzia, Salvetti and Chiaberge 2021) for capsbench.

``routing`` holds the method (torch), ``options`` its options as data, ``plugin.register`` is
called by capsbench's ``capsbench.plugins`` entry point.
"""
