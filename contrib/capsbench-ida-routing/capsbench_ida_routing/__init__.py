"""Inverted dot-product attention routing (Tsai, Sohn, Salakhutdinov and Fidler, ICLR 2020) for capsbench.

Importing this package imports nothing heavy: the routing itself is in ``routing`` (torch), its
options and the definition of its measured activation in ``options`` (data only), and
``plugin.register`` is what capsbench's ``capsbench.plugins`` entry point calls.
"""
